"""The export's weight map: every mapped initializer equals its PyTorch parameter in the recorded layout.

Checked independently of the code that wrote the map: the initializers are read with onnx's own
parser (not the map's byte offsets), the parameters from the diffusers folder the export came from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdrt.export.weight_map import raw_data_offsets
from sdrt.manifest import Manifest
from sdrt.reference import load_source_pipeline
from sdrt.weight_map import WeightMap


@pytest.mark.parametrize("fixture, component", [(f, c) for f in ("tiny_onnx", "tiny_sd21_onnx", "tiny_sdxl_onnx")
                                                 for c in ("unet", "text_encoder")]
                         + [("tiny_sdxl_onnx", "text_encoder_2")])
def test_every_mapped_initializer_equals_its_parameter(fixture, component, request):
    import onnx
    from onnx import numpy_helper

    folder = request.getfixturevalue(fixture)
    manifest = Manifest.load(folder)
    assert manifest.components[component]["weight_map"] == f"{component}/weight_map.json"
    data = json.loads((folder / component / "weight_map.json").read_text())
    model = onnx.load(str(manifest.onnx_path(component)))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    module = getattr(load_source_pipeline(manifest), component)
    params = {name: p.detach().numpy() for name, p in module.named_parameters()}

    layouts = set()
    for name, records in data["parameters"].items():
        for record in records:
            value = initializers[record["initializer"]]
            expected = params[name].T if record["layout"] == "transpose" else params[name]
            assert np.array_equal(value, expected), f"{record['initializer']} != {name} ({record['layout']})"
            layouts.add(record["layout"])
    # every Linear / Conv weight a LoRA can target is mapped; only folded constants are left out
    weights = [n for n, p in params.items() if n.endswith(".weight") and p.ndim in (2, 4)]
    missing = [n for n in weights if n not in data["parameters"] and n not in data["unused"]]
    assert [n.removeprefix("text_model.") for n in missing] in ([], ["embeddings.position_embedding.weight"]), missing
    assert layouts == {"identity", "transpose"}  # the dynamo export transposes MatMul weights


def test_parameters_no_output_depends_on_are_listed_as_unused(tiny_sdxl_onnx):
    """SDXL's first text encoder ends at hidden_states[-2]: its last layer and final norm are not in the graph."""
    data = json.loads((tiny_sdxl_onnx / "text_encoder" / "weight_map.json").read_text())
    module = load_source_pipeline(Manifest.load(tiny_sdxl_onnx)).text_encoder
    last = module.config.num_hidden_layers - 1
    expected = sorted(n for n, _ in module.named_parameters() if n.startswith(f"encoder.layers.{last}.")
                      or n.startswith("final_layer_norm."))
    assert sorted(data["unused"]) == expected
    for component in ("text_encoder_2", "unet"):
        assert json.loads((tiny_sdxl_onnx / component / "weight_map.json").read_text())["unused"] == {}


def test_byte_offsets_point_at_the_initializers(tiny_onnx):
    """The protobuf walk finds each inline initializer's raw bytes; the memory map reads them back."""
    import onnx
    from onnx import numpy_helper

    path = tiny_onnx / "unet" / "model.onnx"
    offsets = raw_data_offsets(path)
    model = onnx.load(str(path))
    blob = path.read_bytes()
    for init in model.graph.initializer:
        if init.raw_data:
            start, length = offsets[init.name]
            assert blob[start:start + length] == init.raw_data
    weight_map = WeightMap.load(Manifest.load(tiny_onnx), "unet")
    name, records = next(iter(weight_map.parameters.items()))
    read = weight_map.base(records[0])
    wanted = next(i for i in model.graph.initializer if i.name == records[0]["initializer"])
    assert np.array_equal(read, numpy_helper.to_array(wanted))
    assert not read.flags.writeable  # the base is read-only: a merge can never change it


def test_an_export_without_a_weight_map_asks_for_a_re_export(tiny_onnx, tmp_path):
    from sdrt.errors import SdrtError

    data = json.loads((tiny_onnx / "sdrt.json").read_text())
    for entry in data["components"].values():
        entry.pop("weight_map", None)
    (tmp_path / "sdrt.json").write_text(json.dumps(data))
    with pytest.raises(SdrtError, match="re-export with sdrt export --force"):
        WeightMap.load(Manifest.load(tmp_path), "unet")
