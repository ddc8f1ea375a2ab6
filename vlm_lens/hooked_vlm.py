"""HookedVLM: a HuggingFace vision-language model behind the canonical hook vocabulary.

    >>> from vlm_lens import HookedVLM
    >>> model = HookedVLM.from_pretrained("toy-llava")                     # doctest: +SKIP
    >>> inputs = model.prepare(images=[img], prompts=["is there a red circle ?"])  # doctest: +SKIP
    >>> logits, cache = model.run_with_cache(inputs, names_filter="blocks.1.hook_resid_post")  # doctest: +SKIP

The wrapped HF model is never changed: hooks come and go through one session
(``model.hooks(...)``), and every number equals what the HF model computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from vlm_lens.adapter import REGISTRY, Adapter, get_module, layer_list, model_device_dtype
from vlm_lens.cache import ActivationCache
from vlm_lens.errors import HookSessionError, InputError
from vlm_lens.hooks import HookFn, HookSession, Sessions
from vlm_lens.inputs import VLMInputs
from vlm_lens.names import OPT_IN_SUFFIXES, Vocabulary
from vlm_lens.persistent import PersistentHooks
from vlm_lens.preparing import Preparing
from vlm_lens.sae import SAESplicing
from vlm_lens.tl_extras import _PositionSlicer, _ProgressStreamer, _tl_fields, per_token_loss
from vlm_lens.weights import Weights

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
RETURN_TYPES = ("logits", "loss", "both", None)


class _Stopped(Exception):
    """Raised by the stop_at_layer hook: carries the residual stream out of the HF forward."""

    def __init__(self, resid: Tensor):
        super().__init__("stopped at a layer")
        self.resid = resid


def _keep(logits_to_keep: int) -> dict:
    if logits_to_keep < 0:
        raise InputError(f"logits_to_keep must be 0 (all positions) or a positive count, got {logits_to_keep}")
    return {"logits_to_keep": logits_to_keep} if logits_to_keep else {}


@dataclass(frozen=True)
class VLMConfig:
    """Sizes read off the instantiated modules (so they hold on the meta device too), under TransformerLens's
    field names where TL has one (``n_key_value_heads``, ``n_ctx``, ``normalization_type``, ``act_fn``)."""

    family: str
    n_layers: int
    n_vision_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    d_vision: int
    image_token_id: int
    n_ctx: int | None = None  # the language model's positions (max_position_embeddings)
    normalization_type: str = "RMS"  # every supported family's language model uses RMSNorm
    act_fn: str | None = None  # the MLP's activation, as the HF config names it ("silu", "gelu_pytorch_tanh")
    attn_only: bool = False  # every block has an MLP
    positional_embedding_type: str = "rotary"  # RoPE (Qwen2-VL's multimodal RoPE included): no hook_pos_embed
    # layers whose attention is cross-attention to the image (Llama-3.2-Vision): there the image's features are the
    # attention's keys and values, and the image has no patch tokens in the sequence
    cross_layers: tuple[int, ...] = ()
    device: torch.device | None = None  # where the model's embedding is now (updated by .to())
    dtype: torch.dtype | None = None
    # the fields TransformerLens code reads, from the HF config and modules
    model_name: str = ""  # the checkpoint's name or path (HF's _name_or_path), else the family
    original_architecture: str = ""  # the HF class, e.g. "LlavaForConditionalGeneration"
    tokenizer_name: str | None = None
    gated_mlp: bool = True  # gate_proj * up_proj (every supported family)
    eps: float = 1e-6  # the language model's RMSNorm epsilon
    final_rms: bool = True
    rotary_dim: int | None = None  # dimensions of each head rotated (d_head unless a partial rotary factor)
    rotary_base: float | None = None  # RoPE's theta (the full-attention layers' where they differ)
    n_params: int = (
        0  # TL's count: the language blocks' attention and MLP weight matrices (no embeddings, norms, biases)
    )
    parallel_attn_mlp: bool = False
    use_attn_result: bool = False  # hook_result is opt-in by name instead (names_filter)
    default_prepend_bos: bool = True  # whether the tokenizer adds BOS itself (prepare() uses the processor's rule)

    @property
    def n_key_value_heads(self) -> int:
        return self.n_kv_heads

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab


class HookedVLM(Preparing, Weights, PersistentHooks, SAESplicing, nn.Module):
    """A hooked view of an HF VLM. Build it with ``from_pretrained`` or ``from_hf``.

    An ``nn.Module`` whose one child is the HF model: ``.to``, ``.parameters()``, ``state_dict()`` (keys
    prefixed ``hf_model.``), ``.eval()`` act on it. TL's weight names are in ``vlm_lens.weights``, its
    persistent hooks in ``vlm_lens.persistent``, SAE splicing in ``vlm_lens.sae``."""

    hf_model: Any  # a transformers PreTrainedModel of a registered family (its config, generate, ...)

    def __init__(self, hf_model: Any, adapter: Adapter, processor=None):
        super().__init__()
        self.hf_model = hf_model
        self.train(hf_model.training)  # the wrapper reports (and keeps) the HF model's mode
        self.adapter = adapter
        self.processor = processor
        self._sessions = Sessions()  # the hook sessions active on this model (they share attention routing)
        self._running = False  # a forward is in progress: a hook must not start another
        self._added: list = []  # persistent hooks (vlm_lens.persistent), oldest first
        self._saes: dict = {}  # spliced SAEs by host name (vlm_lens.sae)
        layers = layer_list(hf_model, adapter.modules["layers"])
        vision_layers = layer_list(hf_model, adapter.modules["vision_layers"])
        injected = adapter.injected_layers(hf_model.config) if adapter.injected_layers else ()
        attn = get_module(layers[0], adapter.block["attn"])
        q_out = get_module(layers[0], adapter.block["attn_q"]).weight.shape[0]
        k_out = get_module(layers[0], adapter.block["attn_k"]).weight.shape[0]
        self.vocab = Vocabulary(
            len(layers), len(vision_layers), injected, adapter.crossing(hf_model.config), grouped=k_out != q_out
        )
        text = hf_model.config.get_text_config()
        self._cfg = VLMConfig(
            family=adapter.family,
            n_layers=len(layers),
            n_vision_layers=len(vision_layers),
            d_model=get_module(hf_model, adapter.modules["embed"]).weight.shape[1],
            d_mlp=get_module(layers[0], adapter.block["mlp_down"]).weight.shape[1],
            n_heads=q_out // attn.head_dim,
            n_kv_heads=k_out // attn.head_dim,
            d_head=attn.head_dim,
            d_vocab=get_module(hf_model, adapter.modules["unembed"]).weight.shape[0],
            d_vision=getattr(hf_model.config.vision_config, adapter.vision_width),
            image_token_id=hf_model.config.image_token_id,
            n_ctx=getattr(text, "max_position_embeddings", None),
            act_fn=getattr(text, "hidden_act", None) or getattr(text, "hidden_activation", None),
            cross_layers=self.vocab.cross_layers,
            **_tl_fields(hf_model, adapter, processor, layers, attn.head_dim),
        )

    @property
    def cfg(self) -> VLMConfig:
        return replace(self._cfg, device=self.device, dtype=self.dtype)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model: nn.Module, processor=None) -> HookedVLM:
        """Wrap an already-built transformers model (never modified)."""
        return cls(hf_model, REGISTRY.lookup(hf_model), processor)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> HookedVLM:
        """A hub id or local checkpoint directory, with its own processor. See ``vlm_lens.loading``."""
        from vlm_lens.loading import load_pretrained

        hf_model, processor = load_pretrained(name_or_path, **kwargs)
        return cls.from_hf(hf_model, processor)

    # -- tokens --------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self.processor is None:
            raise InputError("this model was wrapped without a processor; pass processor= to from_hf")
        return self.processor.tokenizer

    def to_string(self, ids: Tensor | Sequence[int] | int) -> str | list[str]:
        """Decode token ids; a 2-D batch gives a list of strings."""
        if isinstance(ids, int):
            ids = [ids]
        if isinstance(ids, Tensor) and ids.ndim == 2:
            return self.tokenizer.batch_decode(ids)
        return self.tokenizer.decode(ids)

    def to_tokens(
        self, input: str | Sequence[str], images=None, *, template: bool = True, padding_side: str = "left"
    ) -> Int[Tensor, "batch pos"]:
        """TL's ``to_tokens``: [batch, pos] token ids. With ``images``, the ids the model runs on: the prompt in the
        family's format with its image tokens (``prepare``'s ``input_ids``); without, the text alone, with the
        tokenizer's own special tokens (a list of prompts is padded on ``padding_side``)."""
        if images is not None:
            return self.prepare(images, input, template=template, padding_side=padding_side).input_ids
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tokenizer = self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, padding_side
        try:
            return tokenizer([input] if isinstance(input, str) else list(input), return_tensors="pt", padding=True)[
                "input_ids"
            ]
        finally:
            tokenizer.padding_side = side

    def to_str_tokens(
        self, tokens: VLMInputs | Tensor | str | Sequence[int], images=None
    ) -> list[str] | list[list[str]]:
        """Each token as a string, position by position (padding and every image token included, so index i is
        position i of the cache). A batch gives one list per item; a string is tokenised without special tokens,
        or, with ``images``, prepared as ``to_tokens`` would. Where the image tokens are known (``VLMInputs``, or
        a string with its images) each says where it sits: ``<image 0 r1 c2>`` is row 1, column 2 of image 0's
        grid (``<image 0 tile 0,1 r1 c2>`` in the crop at tile row 0, column 1 of a multi-crop image; ``<video 0 t1 r0 c1>``
        in frame 1 of video 0)."""
        if isinstance(tokens, str) and images is not None:
            tokens = self.prepare(images, tokens)
        if isinstance(tokens, str):
            tokens = self.tokenizer.encode(tokens, add_special_tokens=False)
        if isinstance(tokens, VLMInputs):
            rows = [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in tokens.input_ids]
            for row, spans in zip(rows, tokens.image_spans):
                for span in spans:
                    for view in span.all_views:
                        where = (
                            ""
                            if view.kind == "base"
                            else f"t{view.frame} "
                            if span.video
                            else f"{view.kind} {view.tile[0]},{view.tile[1]} "
                        )
                        for pos in view.positions:
                            r, c = view.cell_of(pos) or (0, 0)
                            row[pos] = f"<{span.label} {where}r{r} c{c}>"
            return rows
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in tokens]
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        return self.tokenizer.convert_ids_to_tokens(ids)

    def to_single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(f"{text!r} is {len(ids)} tokens ({ids}), not one")
        return ids[0]

    def hook_names(self) -> list[str]:
        return self.vocab.names()

    def hook_shape(self, name: str) -> tuple[int | str, ...]:
        """The shape a hook receives: this model's sizes filled in, per-run dimensions by name.

        ``model.hook_shape("blocks.0.mlp.hook_post") == ("batch", "pos", 11008)`` for LLaVA-1.5-7B.
        Qwen2-VL packs all images' vision tokens in one dimension: its vision hooks are [patch, d].
        """
        cfg = self._cfg
        sizes = {
            "d_model": cfg.d_model,
            "d_mlp": cfg.d_mlp,
            "head": cfg.n_heads,
            "kv_head": cfg.n_kv_heads,
            "d_head": cfg.d_head,
            "d_vision": cfg.d_vision,
            "vocab": cfg.d_vocab,
            "1": 1,
        }
        dims = self.vocab.info(name).spec.shape.split()
        if self.adapter.packed_vision and dims[0] == "image":
            dims = dims[1:]
        return tuple(sizes.get(d, d) for d in dims)

    def _packed(self, name: str) -> bool:
        """A packed tower's hook ([patch, d]): it fires once for the images and once for the videos of a batch
        holding both, and the cache keeps both, images' rows first (HF's order)."""
        base = name.removesuffix("_grad")
        return self.adapter.packed_vision and self.vocab.info(base).spec.shape.split()[0] == "image"

    @property
    def device(self) -> torch.device:
        """Where inputs go: the token embedding's device (the first shard's under a ``device_map``)."""
        return get_module(self.hf_model, self.adapter.modules["embed"]).weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype floating inputs (pixels) take: the model's parameters' (a half-precision checkpoint's own)."""
        return model_device_dtype(self.hf_model)[1]

    # -- running -------------------------------------------------------------------------
    def hooks(
        self,
        fwd_hooks: Iterable[tuple[str, HookFn]] = (),
        *,
        bwd_hooks: Iterable[tuple[str, HookFn]] = (),
        inputs: VLMInputs | None = None,
        query_positions=None,
    ) -> HookSession:
        """Context manager adding ``fwd_hooks`` (and ``bwd_hooks``) for its duration; removes exactly what it added."""
        positions = None if inputs is None else self._query_positions(inputs, query_positions)
        return HookSession(
            self.hf_model,
            self.adapter,
            self.vocab,
            self._expand(fwd_hooks),
            positions,
            self._sessions,
            self._expand(bwd_hooks),
            None if inputs is None else inputs.input_ids.shape[1],
        )

    @contextmanager
    def _one_run(self, method: str) -> Iterator[None]:
        """A model run that is not nested in another: a hook calling the model it hooks would recurse without end."""
        if self._running:
            raise HookSessionError(
                f"{method}() was called while this model is running, from inside a hook: a hook "
                "cannot run the model it is hooked into; keep what you need in the hook (hook.ctx) "
                "and run again after this forward returns"
            )
        self._running = True
        try:
            yield
        finally:
            self._running = False

    def _expand(self, fwd_hooks) -> list[tuple[str, HookFn]]:
        """TransformerLens also takes a name filter in place of a name."""
        out: list[tuple[str, HookFn]] = []
        for name, fn in fwd_hooks:
            if callable(name):
                out.extend((n, fn) for n in self.vocab.names() if name(n))
            else:
                out.append((name, fn))
        return out

    def _stoppers(self, stop_at_layer: int | None) -> tuple[list, list]:
        """TL's early exit, as (hooks that run first, hooks that run last): layers from ``stop_at_layer`` on never
        run, and the residual entering it is returned. Stopping at layer l raises before any hook at
        ``blocks.{l}.hook_resid_pre`` runs; stopping after the last layer, after every hook at its output."""
        if stop_at_layer is None:
            return [], []
        n = self._cfg.n_layers
        layer = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer
        if not 0 <= layer <= n:
            raise InputError(f"stop_at_layer must be in 0..{n} (or -{n}..-1), got {stop_at_layer}")

        def stop(resid: Tensor, hook) -> None:
            raise _Stopped(resid)

        return (
            ([(f"blocks.{layer}.hook_resid_pre", stop)], [])
            if layer < n
            else ([], [(f"blocks.{n - 1}.hook_resid_post", stop)])
        )

    def _labels(self, inputs: VLMInputs) -> Int[Tensor, "batch pos"]:
        """TL's loss target: every text token that a real token predicts (-100, which HF ignores, at padding, at image
        tokens, and at each item's first token, which only padding precedes)."""
        labels = inputs.input_ids.clone()
        mask = inputs.attention_mask
        after_padding = torch.ones_like(mask, dtype=torch.bool)
        after_padding[:, 1:] = mask[:, :-1] == 0
        labels[(mask == 0) | after_padding | (labels == self._cfg.image_token_id)] = -100
        return labels

    def _run(
        self,
        method: str,
        inputs: VLMInputs,
        fwd_hooks,
        bwd_hooks,
        query_positions,
        logits_to_keep: int,
        return_type: str | None,
        stop_at_layer: int | None,
        labels: Tensor | None,
        extra=(),
        loss_per_token: bool = False,
    ):
        """One hooked forward: what ``forward``, ``run_with_hooks`` and ``run_with_cache`` share."""
        if return_type not in RETURN_TYPES:
            raise InputError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        loss = return_type in ("loss", "both")
        if loss and logits_to_keep:
            raise InputError("a loss needs every position's logits: drop logits_to_keep")
        if loss_per_token and not loss:
            raise InputError("loss_per_token=True needs return_type='loss' or 'both'")
        labels = (self._labels(inputs) if labels is None else labels) if loss else None
        kwargs = {"labels": labels} if loss and not loss_per_token else {} if loss else _keep(logits_to_keep)
        first, last = self._stoppers(stop_at_layer)
        hooks = first + list(self._expand(fwd_hooks)) + list(extra) + last
        try:
            with (
                self._one_run(method),
                self.hooks(hooks, bwd_hooks=bwd_hooks, inputs=inputs, query_positions=query_positions),
            ):
                out = self.hf_model(**inputs.tensors, **kwargs)
        except _Stopped as stopped:
            return stopped.resid
        if return_type is None:
            return None
        loss_value = per_token_loss(out.logits, labels) if loss_per_token and labels is not None else out.loss
        return {"logits": out.logits, "loss": loss_value}.get(return_type, (out.logits, loss_value))

    def forward(
        self,
        inputs: VLMInputs | None = None,
        *,
        logits_to_keep: int = 0,
        return_type: str | None = "logits",
        stop_at_layer: int | None = None,
        labels: Tensor | None = None,
        loss_per_token: bool = False,
        **tensors,
    ) -> Float[Tensor, "batch pos vocab"] | Float[Tensor, ""] | Float[Tensor, "batch pos_1"] | tuple | None:
        """Logits, as HF computes them. ``logits_to_keep=k`` keeps only the last k positions (the answer
        position of a left-padded batch with k=1): a [batch, k, vocab] tensor instead of [batch, pos, vocab].

        TransformerLens's options: ``return_type`` "logits", "loss" (HF's next-token loss on ``labels``; by default
        every text token a real token predicts: padding, image tokens and each item's first token left out), "both" (logits, loss) or None;
        ``stop_at_layer=l`` runs layers below l only and returns the residual stream entering layer l
        ([batch, pos, d_model]; l = n_layers: the final residual, before the final norm); ``loss_per_token=True``
        the loss at each position ([batch, pos - 1]: position i predicting token i + 1; 0 where nothing is
        predicted), whose mean over the predicted positions is the loss."""
        inputs = self.as_inputs(inputs, **tensors)
        return self._run(
            "forward",
            inputs,
            (),
            (),
            None,
            logits_to_keep,
            return_type,
            stop_at_layer,
            labels,
            loss_per_token=loss_per_token,
        )

    def run_with_hooks(
        self,
        inputs: VLMInputs | None = None,
        *,
        fwd_hooks: Iterable[tuple[str, HookFn]] = (),
        bwd_hooks: Iterable[tuple[str, HookFn]] = (),
        query_positions=None,
        logits_to_keep: int = 0,
        return_type: str | None = "logits",
        stop_at_layer: int | None = None,
        labels: Tensor | None = None,
        reset_hooks_end: bool = True,
        loss_per_token: bool = False,
        **tensors,
    ):
        """``forward`` with hooks for this call. Backward hooks are attached to this forward's tensors: they fire
        when ``backward`` runs through it, after this returns. ``reset_hooks_end=False`` (TL's): the hooks stay
        on the model afterwards, as ``add_hook`` would leave them, until ``reset_hooks()``."""
        inputs = self.as_inputs(inputs, **tensors)
        if not reset_hooks_end:  # TL adds them for good, runs, and leaves them
            for name, fn in fwd_hooks:
                self.add_hook(name, fn)
            for name, fn in bwd_hooks:
                self.add_hook(name, fn, dir="bwd")
            fwd_hooks, bwd_hooks = (), ()
        return self._run(
            "run_with_hooks",
            inputs,
            fwd_hooks,
            bwd_hooks,
            query_positions,
            logits_to_keep,
            return_type,
            stop_at_layer,
            labels,
            loss_per_token=loss_per_token,
        )

    def cache_names(self, names_filter: NamesFilter) -> list[str]:
        """The names a names_filter selects. None: all but the opt-in full attention patterns."""
        if names_filter is None:
            return [n for n in self.vocab.names() if not n.endswith(OPT_IN_SUFFIXES)]
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            return [n for n in self.vocab.names() if names_filter(n)]
        return [self.vocab.info(n).name for n in names_filter]

    def run_with_cache(
        self,
        inputs: VLMInputs | None = None,
        *,
        names_filter: NamesFilter = None,
        fwd_hooks: Iterable[tuple[str, HookFn]] = (),
        bwd_hooks: Iterable[tuple[str, HookFn]] = (),
        query_positions=None,
        device: torch.device | str | None = None,
        logits_to_keep: int = 0,
        return_type: str | None = "logits",
        stop_at_layer: int | None = None,
        labels: Tensor | None = None,
        incl_bwd: bool = False,
        remove_batch_dim: bool = False,
        pos_slice=None,
        loss_per_token: bool = False,
        **tensors,
    ) -> tuple[Tensor | None, ActivationCache]:
        """The output (as ``forward`` gives it) and the activations named by ``names_filter`` (detached; moved to
        ``device``). ``incl_bwd=True`` also runs ``backward`` from the output, which must then be a scalar
        (``return_type="loss"``), and caches each name's gradient as ``name + "_grad"``.

        TL's options: ``remove_batch_dim=True`` (a batch of one) caches every activation without its batch
        dimension; ``pos_slice`` (an int, a slice, positions, ``"image"`` or ``"text"``) keeps only those positions
        of every activation with a position axis (an attention pattern's query axis), as TL's ``pos_slice``."""
        inputs = self.as_inputs(inputs, **tensors)
        if remove_batch_dim and inputs.batch_size != 1:
            raise InputError(f"remove_batch_dim=True needs a batch of one, got {inputs.batch_size} items")
        store: dict[str, Tensor] = {}
        slicer = (
            _PositionSlicer(self.vocab, inputs, pos_slice, self._cfg.image_token_id) if pos_slice is not None else None
        )

        def keep(activation: Tensor, name: str) -> None:
            activation = activation.detach()
            if slicer is not None:
                activation = slicer(activation, name)
            activation = activation if device is None else activation.to(device)
            if name in store and self._packed(name):  # the tower ran on the images, then on the videos
                pair = [activation, store[name]] if name.endswith("_grad") else [store[name], activation]
                activation = torch.cat(pair)  # backward meets the videos' rows first
            store[name] = activation

        def save(activation: Tensor, hook) -> None:
            keep(activation, hook.name)

        def save_grad(grad: Tensor, hook) -> None:
            keep(grad, hook.name + "_grad")

        names = self.cache_names(names_filter)
        if incl_bwd and return_type != "loss":
            raise InputError(
                "incl_bwd=True runs backward from the output, which must be a scalar: "
                "use return_type='loss' (or bwd_hooks with your own backward)"
            )
        grads = [(name, save_grad) for name in names] if incl_bwd else []
        with torch.enable_grad() if incl_bwd else nullcontext():
            out = self._run(
                "run_with_cache",
                inputs,
                fwd_hooks,
                list(self._expand(bwd_hooks)) + grads,
                query_positions,
                logits_to_keep,
                return_type,
                stop_at_layer,
                labels,
                extra=[(name, save) for name in names],
                loss_per_token=loss_per_token,
            )
            if incl_bwd:
                out.backward()
        cache = ActivationCache(store, self.vocab, inputs, self)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache

    def generate(
        self,
        inputs: VLMInputs | None = None,
        *,
        max_new_tokens: int = 8,
        fwd_hooks: Iterable[tuple[str, HookFn]] = (),
        do_sample: bool = False,
        stop_at_eos: bool = True,
        verbose: bool = False,
        return_type: str = "tokens",
        **kwargs,
    ) -> Int[Tensor, "batch total_pos"] | Mapping | list[str]:
        """HF ``generate`` with hooks active at every step (``hook.step``: 0 = prefill).

        Returns the prompt and new tokens, as HF does (HF's output object with ``return_dict_in_generate=True``). Extra keyword arguments go to HF's
        ``generate`` (temperature, top_p, num_return_sequences, ...); forward tensors go in ``inputs``.

        TL's options: ``stop_at_eos=False`` generates all ``max_new_tokens`` past an end-of-sequence token;
        ``verbose=True`` shows a progress bar over the new tokens; ``return_type="str"`` gives each item's text
        (prompt and answer, special and image tokens dropped) instead of the tokens.
        """
        if return_type not in ("tokens", "str"):
            raise InputError(f"return_type must be 'tokens' or 'str', got {return_type!r}")
        if not stop_at_eos:
            kwargs["eos_token_id"] = None
        if verbose:
            kwargs["streamer"] = _ProgressStreamer(max_new_tokens)
        tensor_keys = set(kwargs) & set(self.adapter.forward_keys)
        tensors = {k: kwargs.pop(k) for k in tensor_keys}
        inputs = self.as_inputs(inputs, **tensors)
        mask = inputs.attention_mask
        if inputs.batch_size > 1 and bool((mask[:, -1] == 0).any()):
            raise InputError(
                "generation from a right-padded batch would continue after padding; "
                "use model.prepare(..., padding_side='left')"
            )
        with self._one_run("generate"), self.hooks(fwd_hooks, inputs=inputs):
            out = self.hf_model.generate(**inputs.tensors, max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs)
        if verbose:
            kwargs["streamer"].close()
        if return_type == "str":
            sequences = out if isinstance(out, Tensor) else out["sequences"]
            return self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return out
