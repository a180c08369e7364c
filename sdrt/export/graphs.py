"""The exported graphs as torch modules whose inputs and outputs are the spec's tensors.

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
    """input_ids (int32, as the runtime's tokenizer gives them) -> the component spec's outputs.

    ``hidden_states`` is the stack the family's pipeline picks from by ``clip_skip``
    (see `sdrt.spec.families`): for a family whose ``text_layer`` is "last" (sd), final_layer_norm of
    the (k+1)-th last layer; for "penultimate" (the SDXL families), the raw (k+2)-th last layer. ``text_embeds`` is the projected pooled output
    (CLIPTextModelWithProjection), ``pooler_output`` the plain pooled one.
    """

    def __init__(self, text_encoder: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.text_encoder = text_encoder
        self.outputs = component_spec.output_names
        self.text_layer = family.text_layer

    def _stack(self, hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
        layers = len(hidden) - 1
        if self.text_layer == "last":
            # transformers < 5 nests the layers in `text_model`; 5 has them on the model itself
            norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
            return torch.stack([norm(hidden[-(k + 1)]) for k in range(layers)])
        return torch.stack([hidden[-(k + 2)] for k in range(layers)])

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        wants_stack = spec.N.HIDDEN_STATES in self.outputs
        out = self.text_encoder(input_ids.to(torch.int64), output_hidden_states=wants_stack, return_dict=True)
        values = {
            spec.N.LAST_HIDDEN_STATE: lambda: out.last_hidden_state,
            spec.N.POOLER_OUTPUT: lambda: out.pooler_output,
            spec.N.TEXT_EMBEDS: lambda: out.text_embeds,
            spec.N.HIDDEN_STATES: lambda: self._stack(out.hidden_states),
        }
        return tuple(values[name]() for name in self.outputs)


class UNetGraph(torch.nn.Module):
    """The spec's UNet inputs, in order (timestep float32 even in fp16 graphs) -> out_sample.

    SDXL UNets also take the pooled ``text_embeds`` and ``time_ids`` (diffusers' added_cond_kwargs),
    LCM-distilled ones the guidance embedding ``timestep_cond``; a UNet spec with residual inputs
    (``down_block_residual_<i>``, ``mid_block_residual``) adds them as diffusers adds a ControlNet's.
    """

    def __init__(self, unet: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.unet = unet
        self.inputs = component_spec.input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.inputs, inputs))
        added = {k: named[k] for k in (spec.N.TEXT_EMBEDS, spec.N.TIME_IDS) if k in named}
        down = tuple(named[k] for k in self.inputs if k.startswith(spec.N.DOWN_BLOCK_RESIDUAL))
        residuals = ({"down_block_additional_residuals": down,
                      "mid_block_additional_residual": named[spec.N.MID_BLOCK_RESIDUAL]}
                     if spec.N.MID_BLOCK_RESIDUAL in named else {})
        return self.unet(named[spec.N.SAMPLE], named[spec.N.TIMESTEP], named[spec.N.ENCODER_HIDDEN_STATES],
                         timestep_cond=named.get(spec.N.TIMESTEP_COND),
                         added_cond_kwargs=added or None, return_dict=False, **residuals)[0]

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
        time_proj = getattr(self.unet, "add_time_proj", None)
        if time_proj is not None and self.unet.dtype != torch.float32:
            # SDXL's time-id projection computes in float32 and diffusers concatenates it with the
            # fp16 text_embeds (eager PyTorch promotes, then casts the result to fp16); the ONNX
            # exporter emits that Concat without the promotion, an invalid graph. Casting the
            # projection's output first gives the same numbers (the concat itself is exact).
            self.unet.add_time_proj = CastOutput(time_proj, self.unet.dtype)
        try:
            yield
        finally:
            self.unet.num_upsamplers = saved
            if time_proj is not None:
                self.unet.add_time_proj = time_proj


class CastOutput(torch.nn.Module):
    """``module``'s output cast to ``dtype``."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, *args: Any) -> torch.Tensor:
        return self.module(*args).to(self.dtype)


class VaeDecoderGraph(torch.nn.Module):
    """latent_sample (already divided by scaling_factor, as diffusers' pipeline does) -> sample."""

    def __init__(self, vae: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """sample (image in [-1, 1]) -> latent_parameters: the diagonal Gaussian's raw (mean, logvar).

    No sampling in the graph: the runtime splits the channels, clamps logvar to [-30, 20] as
    diffusers' DiagonalGaussianDistribution does, and draws the noise in numpy.
    """

    def __init__(self, vae: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.parameters


class ControlNetGraph(torch.nn.Module):
    """The spec's ControlNet inputs -> its residuals, each times its entry of ``conditioning_scale``.

    The scale is an input with one entry per residual so one graph serves a plain scale (every entry
    the same) and guess mode (diffusers' ramp from 0.1 to 1 times the scale), per call; the
    ControlNet itself runs at scale 1 (x * 1 is exact), as diffusers' own multiplication then is.
    """

    def __init__(self, controlnet: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.controlnet = controlnet
        self.inputs = component_spec.input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.inputs, inputs))
        added = {k: named[k] for k in (spec.N.TEXT_EMBEDS, spec.N.TIME_IDS) if k in named}
        down, mid = self.controlnet(named[spec.N.SAMPLE], named[spec.N.TIMESTEP],
                                    named[spec.N.ENCODER_HIDDEN_STATES], named[spec.N.CONTROLNET_COND],
                                    conditioning_scale=1.0, added_cond_kwargs=added or None, return_dict=False)
        scale = named[spec.N.CONDITIONING_SCALE].to(mid.dtype)
        return tuple(r * scale[i] for i, r in enumerate((*down, mid)))


class ClipVisionGraph(torch.nn.Module):
    """An IP-Adapter's image encoder (CLIPVisionModelWithProjection): pixel_values -> image_embeds."""

    def __init__(self, encoder: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values, return_dict=True).image_embeds


class IPProjectionGraph(torch.nn.Module):
    """An IP-Adapter's image projection and per-layer to_k_ip / to_v_ip: image_embeds -> ip_key_<k>, ip_value_<k>
    (`module`: what `sdrt.export.ip_adapter.projection` builds)."""

    def __init__(self, module: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.module = module

    def forward(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.module(image_embeds)


class SD3TransformerGraph(torch.nn.Module):
    """SD3's MMDiT: hidden_states (latents), the joint encoder_hidden_states (CLIP then T5 tokens),
    pooled_projections, timestep (float32 in [0, 1000], even in fp16 graphs) -> out_hidden_states."""

    def __init__(self, transformer: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.transformer(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections, timestep=timestep, return_dict=False)[0]


class FluxTransformerGraph(torch.nn.Module):
    """Flux's transformer on the spec's inputs, in order -> out_hidden_states (the packed velocity).

    ``timestep`` is the scheduler's t in [0, 1000) like the UNet's; the graph divides it by 1000 as
    FluxPipeline does before calling the transformer (which multiplies back: the same fp32 ops).
    ``guidance`` (guidance-distilled models) is the guidance scale itself, as the pipeline passes it.
    """

    def __init__(self, transformer: Any, component_spec: spec.ComponentSpec, family: spec.Family):
        super().__init__()
        self.transformer = transformer
        self.inputs = component_spec.input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.inputs, inputs))
        FN = spec.FluxName
        embedding = self.transformer.time_text_embed
        if hasattr(embedding, "exact"):  # an fp16 graph: see export_context
            guidance = named.get(FN.GUIDANCE)
            embedding.exact = (named[FN.TIMESTEP].float(), None if guidance is None else guidance.float() * 1000)
        return self.transformer(
            hidden_states=named[FN.LATENTS], encoder_hidden_states=named[FN.ENCODER_HIDDEN_STATES],
            pooled_projections=named[FN.POOLED_PROJECTIONS], timestep=named[FN.TIMESTEP] / 1000,
            img_ids=named[FN.IMG_IDS], txt_ids=named[FN.TXT_IDS], guidance=named.get(FN.GUIDANCE),
            return_dict=False)[0]

    @contextlib.contextmanager
    def export_context(self) -> Iterator[None]:
        """fp16 graphs: the timestep and guidance embeddings in fp32, from the exact inputs.

        The transformer casts ``timestep / 1000`` and the guidance to its dtype and multiplies by 1000
        before the sinusoidal embedding; in fp16 that moves t by up to ~0.1 (and the guidance alike),
        which the embedding turns into a 20-100 % change of its highest frequencies (measured on
        tiny-flux: 20 % max relative error of the whole output against fp32). With the embedding
        computed in fp32 from the graph's float32 inputs, the fp16 graph is within 0.2 % (the rest of
        the transformer stays fp16). diffusers' own fp16 pipeline rounds; this graph does not."""
        original = self.transformer.time_text_embed
        if self.transformer.dtype == torch.float32:
            yield
            return
        self.transformer.time_text_embed = exact_time_embedding(original)
        try:
            yield
        finally:
            self.transformer.time_text_embed = original


def exact_time_embedding(embedding: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of Flux's time (and guidance) + pooled-text embedding (the same parameter names),
    computed from exact inputs (`exact`: (timestep, guidance x 1000), set by the graph before each call)
    instead of the transformer's rounded ones; its output cast back to the transformer's dtype."""
    import copy
    import types

    fp32 = copy.deepcopy(embedding).float()
    fp32.exact = None
    compute = type(fp32).forward

    def forward(self: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
        pooled = args[-1]  # (timestep, pooled) or (timestep, guidance, pooled), timestep already x1000
        timestep, guidance = self.exact
        exact = (timestep, pooled.float()) if guidance is None else (timestep, guidance, pooled.float())
        return compute(self, *exact).to(pooled.dtype)

    fp32.forward = types.MethodType(forward, fp32)
    return fp32


#: the spec's graph kind (ComponentSpec.graph) -> the wrapper that traces it
GRAPHS: dict[str, type[torch.nn.Module]] = {
    "text_encoder": TextEncoderGraph,
    "unet": UNetGraph,
    "controlnet": ControlNetGraph,
    "clip_vision": ClipVisionGraph,
    "ip_projection": IPProjectionGraph,
    "sd3_transformer": SD3TransformerGraph,
    "flux_transformer": FluxTransformerGraph,
    "vae_decoder": VaeDecoderGraph,
    "vae_encoder": VaeEncoderGraph,
}


def wrap(component: spec.ComponentSpec, module: Any, model: spec.ModelSpec) -> torch.nn.Module:
    """The graph module of one component of `model` (its graph kind picks the wrapper)."""
    if component.graph not in GRAPHS:
        raise KeyError(f"no export wrapper for the graph kind {component.graph!r} of {component.name}: add it to GRAPHS")
    return GRAPHS[component.graph](module, component, model.family).eval()


def export_context(graph: torch.nn.Module) -> contextlib.AbstractContextManager:
    return graph.export_context() if hasattr(graph, "export_context") else contextlib.nullcontext()


def example_inputs(component: spec.ComponentSpec, dims: Mapping[str, int], *, vocab_size: int, seed: int,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random inputs for one call: `dims` holds every spec symbol (B, h, w and the model's).

    Values come from each tensor's realistic range (`TensorSpec.draw`: images in [-1, 1],
    timesteps in [0, 1000), ids in the vocabulary; Flux's token positions are the (0, row, column)
    grid of the ``h/2`` x ``w/2`` tokens of an h x w latent, its text positions zeros, its guidance scale in [1, 10)), so
    errors are judged where the model works. Float tensors of the component's precision get `dtype`;
    int32 and float32 tensors keep theirs.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for tensor in component.inputs:
        shape = spec.shape_of(tensor, dims)
        if tensor.draw == "positions":
            value = token_positions(-(-int(dims["h"]) // 2), -(-int(dims["w"]) // 2))  # 2x2 patches
        elif tensor.draw == "zeros":
            value = torch.zeros(shape)
        elif tensor.draw == "guidance":
            value = 1.0 + torch.rand(shape, generator=generator) * 9.0
        elif tensor.draw == "ids":
            value = torch.randint(0, vocab_size, shape, generator=generator, dtype=torch.int64)
        elif tensor.draw == "timestep":
            value = torch.rand(shape, generator=generator) * 999.0
        elif tensor.draw == "image":
            value = torch.rand(shape, generator=generator) * 2.0 - 1.0
        elif tensor.draw == "pixels":
            value = torch.floor(torch.rand(shape, generator=generator) * 1024.0)
        elif tensor.draw == "scale":
            value = torch.rand(shape, generator=generator) * 2.0
        else:
            value = torch.randn(shape, generator=generator)
        target = dtype if tensor.dtype == spec.FLOAT else getattr(torch, tensor.dtype)
        inputs[tensor.name] = value.to(target)
    return inputs


def token_positions(h: int, w: int) -> torch.Tensor:
    """[h*w, 3] float32: (0, row, column) of each token, row-major (FluxPipeline's latent image ids)."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    columns = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return torch.stack([torch.zeros(h, w), rows, columns], dim=-1).reshape(h * w, 3)
