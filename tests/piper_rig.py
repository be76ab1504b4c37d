"""A stand-in piper voice: a tiny hand-made ONNX graph that the real piper-tts package loads and runs.

A piper voice is a VITS model exported to ONNX plus a ``FILE.onnx.json`` config.
The package feeds the model

- ``input``: int64 ``[1, N]``, the phoneme ids of one sentence (BOS, each phoneme followed by PAD, EOS),
- ``input_lengths``: int64 ``[1]``, N,
- ``scales``: float32 ``[3]``, ``[noise_scale, length_scale, noise_w]``,
- ``sid``: int64 ``[1]``, the speaker, only when the config has more than one speaker,

and reads its first output, float32 ``[1, 1, samples]``, as the sentence's audio.

This graph honours that contract with no network in it: it makes a tone whose
length is ``floor(N * SAMPLES_PER_ID * length_scale)`` samples, so a test knows
exactly how long the audio for a text must be (:func:`expected_samples`).  The
phoneme map below is our own numbering of the IPA symbols espeak-ng writes for
English.  Nothing here comes from piper's code.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

#: Audio samples the stand-in makes per phoneme id at length_scale 1.0.
SAMPLES_PER_ID = 1000
SAMPLE_RATE = 16000
#: The pitch of the tone (plus STEP_HZ per speaker id).
TONE_HZ = 220.0
STEP_HZ = 20.0

PAD, BOS, EOS = "_", "^", "$"
_PUNCTUATION = " !'(),-.:;?"
_IPA = "æçðøħŋœɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢʰʲʷˈˌːˑ˞ˤβθχᵻⱱ"
_COMBINING = "\u0303\u0327\u0329\u032a\u032f\u0361"


def phoneme_id_map() -> dict[str, list[int]]:
    """Symbol → ``[id]``: the three markers first, then punctuation, letters, digits and IPA."""
    symbols = [PAD, BOS, EOS, *_PUNCTUATION, *"abcdefghijklmnopqrstuvwxyz", *"0123456789", *_IPA, *_COMBINING]
    assert len(symbols) == len(set(symbols)), "a symbol is listed twice"
    return {s: [i] for i, s in enumerate(symbols)}


def voice_config(*, sample_rate: int = SAMPLE_RATE, speakers: int = 1, length_scale: float = 1.0, espeak_voice: str = "en-us") -> dict:
    """The ``FILE.onnx.json`` of a piper voice (the fields piper-tts 1.3+ reads)."""
    ids = phoneme_id_map()
    config = {
        "audio": {"sample_rate": sample_rate, "quality": "x_low"},
        "espeak": {"voice": espeak_voice},
        "phoneme_type": "espeak",
        "inference": {"noise_scale": 0.667, "length_scale": length_scale, "noise_w": 0.8},
        "num_symbols": len(ids),
        "num_speakers": speakers,
        "speaker_id_map": {f"speaker{i}": i for i in range(speakers)} if speakers > 1 else {},
        "phoneme_id_map": ids,
        "language": {"code": espeak_voice.replace("-", "_")},
        "dataset": "lipsync-tool-test-rig",
    }
    return config


def voice_graph(*, speakers: int = 1, sample_rate: int = SAMPLE_RATE):
    """The ONNX model (an ``onnx.ModelProto``) described in the module doc."""
    from onnx import TensorProto, helper

    const = helper.make_tensor
    nodes = [
        # samples = floor(input_lengths * SAMPLES_PER_ID * length_scale), as a scalar.
        helper.make_node("Cast", ["input_lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["one"], value=const("one", TensorProto.INT64, [], [1])),
        helper.make_node("Gather", ["scales", "one"], ["length_scale"], axis=0),
        helper.make_node("Constant", [], ["per_id"], value=const("per_id", TensorProto.FLOAT, [], [float(SAMPLES_PER_ID)])),
        helper.make_node("Mul", ["len_f", "length_scale"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "per_id"], ["samples_1"]),
        helper.make_node("Floor", ["samples_1"], ["samples_floor"]),
        helper.make_node("ReduceSum", ["samples_floor"], ["limit"], keepdims=0),
        helper.make_node("Constant", [], ["zero_f"], value=const("zero_f", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Constant", [], ["one_f"], value=const("one_f", TensorProto.FLOAT, [], [1.0])),
        helper.make_node("Range", ["zero_f", "limit", "one_f"], ["t"]),
        # A tone at the speaker's pitch, with a slow swell so it is not one flat note.
        helper.make_node("Constant", [], ["omega"], value=const("omega", TensorProto.FLOAT, [], [2 * math.pi / sample_rate])),
        helper.make_node("Mul", ["t", "omega"], ["phase"]),
        helper.make_node("Mul", ["phase", "hz"], ["arg"]),
        helper.make_node("Sin", ["arg"], ["tone"]),
        helper.make_node("Constant", [], ["swell_hz"], value=const("swell_hz", TensorProto.FLOAT, [], [3.0])),
        helper.make_node("Mul", ["phase", "swell_hz"], ["swell_arg"]),
        helper.make_node("Sin", ["swell_arg"], ["swell"]),
        helper.make_node("Constant", [], ["depth"], value=const("depth", TensorProto.FLOAT, [], [0.2])),
        helper.make_node("Constant", [], ["base"], value=const("base", TensorProto.FLOAT, [], [0.4])),
        helper.make_node("Mul", ["swell", "depth"], ["swell_scaled"]),
        helper.make_node("Add", ["swell_scaled", "base"], ["gain"]),
        helper.make_node("Mul", ["tone", "gain"], ["wave"]),
        helper.make_node("Constant", [], ["axes"], value=const("axes", TensorProto.INT64, [2], [0, 1])),
        helper.make_node("Unsqueeze", ["wave", "axes"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, ["batch_size", "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["batch_size"]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, ["batch_size"]))
        nodes[:0] = [
            helper.make_node("Cast", ["sid"], ["sid_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["sid_f"], ["sid_s"], keepdims=0),
            helper.make_node("Constant", [], ["step"], value=const("step", TensorProto.FLOAT, [], [STEP_HZ])),
            helper.make_node("Constant", [], ["base_hz"], value=const("base_hz", TensorProto.FLOAT, [], [TONE_HZ])),
            helper.make_node("Mul", ["sid_s", "step"], ["sid_hz"]),
            helper.make_node("Add", ["sid_hz", "base_hz"], ["hz"]),
        ]
    else:
        nodes.insert(0, helper.make_node("Constant", [], ["hz"], value=const("hz", TensorProto.FLOAT, [], [TONE_HZ])))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 1, "time"])]
    graph = helper.make_graph(nodes, "lipsync_tool_piper_stand_in", inputs, outputs)
    # IR 8 / opset 15: what piper's own exports use, and what any onnxruntime since 1.10 loads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="lipsync-tool tests")
    model.ir_version = 8
    return model


def write_voice(folder: Path, name: str = "en_US-test-x_low.onnx", **config) -> Path:
    """Write the stand-in model and its ``.onnx.json`` into *folder*; return the model's path."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = folder / name
    proto = voice_graph(speakers=config.get("speakers", 1), sample_rate=config.get("sample_rate", SAMPLE_RATE))
    onnx.checker.check_model(proto)
    model.write_bytes(proto.SerializeToString())
    Path(str(model) + ".json").write_text(json.dumps(voice_config(**config), ensure_ascii=False, indent=1), encoding="utf-8")
    return model


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def registry_entries(component: str, files: list[Path], base_url: str) -> str:
    """A registry override section pointing *component*'s files at ``base_url/NAME``, with their real size and sha256."""
    lines = []
    for f in files:
        lines += [f'[{component}.checkpoints."{f.name}"]', f'urls = ["{base_url}/{f.name}"]', f'sha256 = "{sha256(f)}"', f"size = {f.stat().st_size}", ""]
    return "\n".join(lines)


def expected_samples(model: Path, text: str, length_scale: float = 1.0) -> tuple[int, int]:
    """(samples, phoneme ids) the stand-in makes for *text*: the real piper phonemizer splits it into
    sentences and numbers them; the graph's rule does the rest."""
    import numpy as np
    from piper import PiperVoice

    voice = PiperVoice.load(str(model))
    samples = ids = 0
    for phonemes in voice.phonemize(text):
        if phonemes:
            n = len(voice.phonemes_to_ids(phonemes))
            ids += n
            # The graph computes in float32, as piper hands it the scales.
            samples += math.floor(float(np.float32(np.float32(n) * np.float32(length_scale)) * np.float32(SAMPLES_PER_ID)))
    return samples, ids
