"""The precision report's table (the measurement itself is `python -m sdrt.bench.precision`)."""

from sdrt.bench.precision import markdown


def test_the_table_names_the_reduced_components_and_unmeasured_variants():
    rows = [{"preset": "shapes", "variant": "fp16 (ort-cpu)", "psnr_db_mean": 78.31, "psnr_db_min": 67.9,
             "component_precision": {"text_encoder": "fp16", "unet": "fp16", "vae_decoder": "fp32"}},
            {"preset": "tiny", "variant": "fp16 (GPU)", "error": "not measured: no GPU on this machine"}]
    lines = markdown(rows).splitlines()
    assert lines[2] == "| shapes | trained | fp16 (ort-cpu) | text_encoder, unet | 78.3 | 67.9 |"
    assert lines[3].startswith("| tiny | random | fp16 (GPU) | – | not measured")
