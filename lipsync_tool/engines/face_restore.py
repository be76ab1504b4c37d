"""GFPGAN v1.4 and the facexlib weights its face helper reads: shared by the engines that restore faces.

SadTalker's ``--enhancer gfpgan`` and Wav2Lip's ``--wav2lip-quality enhanced`` both run
GFPGAN's ``GFPGANer``, whose ``FaceRestoreHelper`` reads RetinaFace and ParseNet from
``gfpgan/weights/`` relative to the working dir: the verified files are linked there.
"""

from __future__ import annotations

from .base import CheckpointSpec

_HF = "https://huggingface.co"


RETINAFACE = CheckpointSpec(
    name="detection_Resnet50_Final.pth",
    urls=(
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
        f"{_HF}/salmonrk/facedetection/resolve/main/detection_Resnet50_Final.pth",
        f"{_HF}/fofr/comfyui/resolve/main/facedetection/detection_Resnet50_Final.pth",
        f"{_HF}/camenduru/SadTalker/resolve/main/new/gfpgan/weights/detection_Resnet50_Final.pth",
    ),
    size=109497761,
    sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    dest="gfpgan/weights/detection_Resnet50_Final.pth",
)


GFPGAN_V14 = CheckpointSpec(
    name="GFPGANv1.4.pth",
    urls=(
        "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
        "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
        f"{_HF}/AndorML/Public/resolve/main/GFPGANv1.4.pth",
        f"{_HF}/datasets/Gourieff/ReActor/resolve/main/models/facerestore_models/GFPGANv1.4.pth",
        f"{_HF}/chaowenguo/pal/resolve/main/GFPGANv1.4.pth",
    ),
    size=348632874,
    sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
    dest="gfpgan/weights/GFPGANv1.4.pth",
)


PARSENET = CheckpointSpec(
    name="parsing_parsenet.pth",
    urls=(
        "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
        f"{_HF}/salmonrk/facedetection/resolve/main/parsing_parsenet.pth",
        f"{_HF}/fofr/comfyui/resolve/main/facedetection/parsing_parsenet.pth",
    ),
    size=85331193,
    sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
    dest="gfpgan/weights/parsing_parsenet.pth",
)


#: GFPGANer and its face helper, for an engine whose own requirements lack them: basicsr, facexlib and
#: gfpgan without build isolation (basicsr's setup.py imports torch) and without their declared
#: dependencies (opencv-python's GUI build would replace the headless cv2; tb-nightly is for
#: training); what they import at run time comes in the step before.
RESTORER_REQUIREMENTS = (
    ((), ("torchvision>=0.17", "setuptools", "wheel", "scikit-image", "pyyaml", "requests", "filterpy", "lmdb", "tqdm")),
    (("--no-build-isolation", "--no-deps"), ("basicsr>=1.4.2", "facexlib>=0.3.0", "gfpgan>=1.3.8")),
)
