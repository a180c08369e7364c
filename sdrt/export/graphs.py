"""The four exported graphs as torch modules whose inputs and outputs are the spec's tensors.

Each wrapper's `forward` takes exactly the spec's inputs, by name and order, and returns exactly
its outputs, so the ONNX graph speaks `sdrt.spec` and nothing else. `example_inputs` draws random
inputs of any shape the spec allows; the trace and the export check both use it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch

from sdrt import spec


class TextEncoderGraph(torch.nn.Module):
    """input_ids (int32, as the runtime's tokenizer gives them) -> last_hidden_state, pooler_output."""

    def __init__(self, text_encoder: Any):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids.to(torch.int64), return_dict=False)
        return out[0], out[1]


class UNetGraph(torch.nn.Module):
    """sample, timestep (float32 even in fp16 graphs), encoder_hidden_states -> out_sample."""

    def __init__(self, unet: Any):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    @contextlib.contextmanager
    def export_context(self) -> Iterator[None]:
        """Trace the UNet's "forward the upsample size" branch, whatever the trace size.

        diffusers decides per call: latent sizes that are multiples of 2**num_upsamplers upsample by
        a plain 2x, others pass each skip connection's size to the upsamplers. A trace keeps only
        the branch of its own size, so a graph traced at 64x64 breaks at odd sizes. With
        num_upsamplers huge, every size takes the size-forwarding branch, whose Resize reads its
        output size from the skip tensor: exact 2x at even sizes (same numbers as the plain
        branch), diffusers' own result at the others. The export check and the size probe
        compare the graph against the untouched module at both kinds of sizes.
        """
        saved = self.unet.num_upsamplers
        self.unet.num_upsamplers = 62
        try:
            yield
        finally:
            self.unet.num_upsamplers = saved


class VaeDecoderGraph(torch.nn.Module):
    """latent_sample (already divided by scaling_factor, as diffusers' pipeline does) -> sample."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """sample (image in [-1, 1]) -> latent_parameters: the diagonal Gaussian's raw (mean, logvar).

    No sampling in the graph: the runtime splits the channels, clamps logvar to [-30, 20] as
    diffusers' DiagonalGaussianDistribution does, and draws the noise in numpy.
    """

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.parameters


#: component -> (the Source attribute holding its torch module, wrapper class)
GRAPHS: dict[str, tuple[str, type[torch.nn.Module]]] = {
    "text_encoder": ("text_encoder", TextEncoderGraph),
    "unet": ("unet", UNetGraph),
    "vae_decoder": ("vae", VaeDecoderGraph),
    "vae_encoder": ("vae", VaeEncoderGraph),
}


def wrap(component: str, module: Any) -> torch.nn.Module:
    return GRAPHS[component][1](module).eval()


def export_context(graph: torch.nn.Module) -> contextlib.AbstractContextManager:
    return graph.export_context() if hasattr(graph, "export_context") else contextlib.nullcontext()


#: How each spec tensor's random values are drawn: realistic ranges, so errors are judged
#: where the model works (images in [-1, 1], timesteps in [0, 1000), ids in the vocabulary).
DRAWS = {
    "input_ids": "ids",
    "timestep": "timestep",
    ("vae_encoder", "sample"): "image",
}


def example_inputs(component: str, dims: Mapping[str, int], *, vocab_size: int, seed: int,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random inputs for one call: `dims` holds every spec symbol (B, h, w and the model's).

    Float tensors of the component's precision get `dtype`; int32 and float32 tensors keep theirs.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for tensor in spec.component(component).inputs:
        shape = spec.shape_of(tensor, dims)
        draw = DRAWS.get((component, tensor.name), DRAWS.get(tensor.name, "normal"))
        if draw == "ids":
            value = torch.randint(0, vocab_size, shape, generator=generator, dtype=torch.int64)
        elif draw == "timestep":
            value = torch.rand(shape, generator=generator) * 999.0
        elif draw == "image":
            value = torch.rand(shape, generator=generator) * 2.0 - 1.0
        else:
            value = torch.randn(shape, generator=generator)
        target = dtype if tensor.dtype == spec.FLOAT else getattr(torch, tensor.dtype)
        inputs[tensor.name] = value.to(target)
    return inputs
