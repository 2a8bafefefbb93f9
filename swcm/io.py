"""Writing outputs so that a crash never leaves a half-written one behind, and so that no
command ever replaces what it did not write itself.

Every directory swcm writes carries an owner file, `.swcm-output`, naming what wrote it
("build", "pretrain", "model", …). It is written inside the directory before the directory
appears under its final name, so a directory with that file is recognisably swcm's own. A
command replaces or writes into an existing directory only when that directory is empty or
carries the command's own owner file; anything else (a file, the user's notes, another
command's run) is refused unless the user says `--overwrite`.

Model directories are checked before transformers reads them (`check_model_dir`): a missing
config, a model of the wrong kind, truncated safetensors weights or missing tokenizer files are
one-line errors naming the file, instead of transformers' pages of model types or tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from typing import TextIO
from pathlib import Path

OWNER_FILE = ".swcm-output"


def output_owner(path: str | os.PathLike) -> str | None:
    """What wrote the directory `path` (its owner file's "written_by"), or None if swcm did not."""
    try:
        record = json.loads((Path(path) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("written_by") if isinstance(record, dict) else None


def _write_owner(directory: Path, owner: str) -> None:
    (directory / OWNER_FILE).write_text(json.dumps({"written_by": owner}) + "\n", encoding="utf-8")


def _is_replaceable(path: Path, owner: str) -> bool:
    """True when `path` is absent, an empty directory, or a directory `owner` wrote."""
    if not os.path.lexists(path):
        return True
    if path.is_symlink() or not path.is_dir():
        return False
    return output_owner(path) == owner or not any(path.iterdir())


def check_output_dir(path: str | os.PathLike, owner: str, overwrite: bool = False) -> None:
    """Raise a one-line error unless `owner` may write the directory `path`.

    Allowed: a path that does not exist yet (in a directory that can be written), an empty
    directory, or a directory that `owner` wrote before (its owner file says so). With
    `overwrite`, also a file or any directory. Nothing is written.
    """
    path = Path(path)
    if not overwrite and not _is_replaceable(path, owner):
        if path.is_dir() and not path.is_symlink():
            found = output_owner(path)
            what = f"holds the output of swcm {found}" if found else "is a directory that swcm did not write, and it is not empty"
        else:
            what = "is a file, not a directory" if path.is_file() else "exists and is not a directory"
        raise FileExistsError(f"{path}: {what}; choose another output directory or give --overwrite")
    _check_writable(path)


def check_output_file(path: str | os.PathLike, overwrite: bool = False, is_own: Callable[[Path], bool] | None = None) -> None:
    """Raise a one-line error unless the file `path` may be (re)written: it does not exist,
    or `is_own(path)` recognises it as an output of the same command, or `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; an output file is expected")
    if os.path.lexists(path) and not overwrite and not (is_own is not None and path.is_file() and is_own(path)):
        raise FileExistsError(f"{path}: exists and was not written by this command; choose another output file or give --overwrite")
    _check_writable(path)


def _check_writable(path: Path) -> None:
    """Raise a one-line error when `path` could not be created: the nearest existing
    ancestor must be a directory this process may write in."""
    parent = path.absolute().parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{path}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: cannot be created, no permission to write in {parent}")


@contextlib.contextmanager
def output_directory(path: str | os.PathLike, owner: str, overwrite: bool = False) -> Iterator[Path]:
    """Claim the directory `path` for `owner` (see `check_output_dir`) for the body of the
    `with` block; yield it as a Path. A library function that replaces it as a whole
    (`atomic_directory`) meanwhile writes it as `owner`'s.

    A missing directory is created with its owner file in one rename; if the body then fails
    before writing anything else into it, it is removed again (with the parents created for
    it; from an empty directory, the owner file is), so a refused run leaves no trace. With
    `overwrite`, a file at `path` is removed and a foreign directory is adopted (its owner file
    written; its files stay unless the command replaces them).
    """
    path = Path(path)
    check_output_dir(path, owner, overwrite)
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        path.unlink()  # only reachable with overwrite: the user asked for the file to be replaced
    created = not path.exists()
    was_empty = not created and not any(path.iterdir())
    topmost_new = path  # the highest directory this call creates
    while not os.path.lexists(topmost_new.parent):
        topmost_new = topmost_new.parent
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        _write_owner(tmp, owner)
        try:
            os.rename(tmp, path)  # fails, harmlessly, if something appeared at `path` meanwhile
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or output_owner(path) != owner:
                raise
            created = False  # another process of the same launch claimed it first
    elif output_owner(path) != owner:
        _write_owner(path, owner)  # an empty directory, or adopted with overwrite
    claim = os.path.abspath(path)
    _claims[claim] = owner
    try:
        yield path
    except BaseException:
        if (created or was_empty) and [p.name for p in path.iterdir()] == [OWNER_FILE]:
            (path / OWNER_FILE).unlink()
            for directory in [path, *path.parents] if created else []:
                with contextlib.suppress(OSError):  # a parent may hold something by now
                    directory.rmdir()
                if directory == topmost_new:
                    break
        raise
    finally:
        _claims.pop(claim, None)


# Directories claimed by the running command (`output_directory`), absolute path -> owner: a
# library function that writes one of them as a whole (`atomic_directory`) writes it for that command.
_claims: dict[str, str] = {}


def mark_output_dir(path: str | os.PathLike, owner: str) -> Path:
    """Create the directory `path` if needed and give it `owner`'s owner file if it has none;
    return it. For library functions that write into a directory (the CLI checks it first)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if output_owner(path) is None:
        _write_owner(path, owner)
    return path


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, owner: str = "model") -> Iterator[Path]:
    """Yield a fresh temporary directory beside `out_dir`; on success it replaces `out_dir`.

    Everything is written to the temporary directory and flushed to disk; only then is the
    old `out_dir` (if any) moved aside and the new one renamed into place, so a kill at any
    moment leaves either the old complete directory or the new complete one. On error the
    temporary directory is removed and `out_dir` is untouched. The new directory carries
    `owner`'s owner file (that of the running command when it claimed `out_dir` with
    `output_directory`); an existing `out_dir` is replaced only if it is empty or that owner
    wrote it, anything else raises FileExistsError before and after the body runs.
    """
    out = Path(out_dir)
    owner = _claims.get(os.path.abspath(out), owner)
    check_output_dir(out, owner)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        _write_owner(tmp, owner)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        check_output_dir(out, owner)  # again: something may have appeared there meanwhile
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write `data` as indented JSON (UTF-8, not escaped) atomically (`atomic_text_file`)."""
    with atomic_text_file(path) as f:
        f.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


@contextlib.contextmanager
def atomic_text_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """Open a temporary UTF-8 text file beside `path`; on success it replaces `path`.

    The data is flushed to disk before the rename, so `path` always holds either its old
    complete content or the new complete content; on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- reading model directories ----------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model",
                   "sentencepiece.model", "vocab.txt", "vocab.json", "source.spm")


def check_model_dir(
    path: str | os.PathLike,
    model_types: Collection[str] | None = None,
    description: str = "a supported model",
    *,
    weights: bool = True,
    tokenizer: bool = True,
) -> None:
    """Raise a one-line error naming the file unless `path` is a model directory that loads:
    a config.json (valid JSON, with a `model_type` among `model_types` when given), complete
    safetensors weights (`weights`: header and size checked, nothing loaded) and tokenizer files
    (`tokenizer`). A path that does not exist and reads as a hub id ("org/name") is left to
    transformers, which fetches it when online.
    """
    text = os.fspath(path)
    p = Path(path)
    if not os.path.lexists(p):
        if _HUB_ID.fullmatch(text):
            _check_hub_model(text)
            return
        raise FileNotFoundError(f"{p}: no such directory")
    if not p.is_dir():
        raise NotADirectoryError(f"{p}: not a directory; a model directory is expected")
    config_file = p / "config.json"
    if not config_file.is_file() and (p / "adapter_config.json").is_file():
        _check_adapter_dir(p, model_types, description, weights=weights, tokenizer=tokenizer)
        return
    if not config_file.is_file():
        raise FileNotFoundError(f"{p}: no config.json, so not a Hugging Face model directory")
    config = read_json_object(config_file)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f'{config_file}: no "model_type", so not a Hugging Face model config')
    if model_types is not None and model_type not in model_types:
        raise ValueError(f"{p}: a {model_type!r} model, not {description}")
    if weights:
        for file in weight_files(p):
            check_safetensors(file)
    if tokenizer and not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{p}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, …)")


def _check_adapter_dir(path: Path, model_types, description: str, *, weights: bool, tokenizer: bool) -> None:
    """`check_model_dir` for a peft adapter directory (a LoRA run's, `swcm.lora`): its base model
    (that adapter_config.json names) is checked as the model, then the adapter's own files."""
    from .lora import ADAPTER_WEIGHTS, adapter_base

    base = adapter_base(path)
    try:
        check_model_dir(base, model_types, description, weights=weights, tokenizer=False)
    except (OSError, ValueError) as err:
        raise type(err)(f"{path}: a LoRA adapter whose base model does not load ({err})") from None
    if weights:
        if not (path / ADAPTER_WEIGHTS).is_file():
            raise FileNotFoundError(f"{path / ADAPTER_WEIGHTS}: missing; the adapter has no weights")
        check_safetensors(path / ADAPTER_WEIGHTS)
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, …)")


def _check_hub_model(name: str) -> None:
    """A one-line error unless the hub (or its local cache) has `name`'s config.json; the file
    is cached, so loading the model afterwards costs no second request."""
    from transformers.utils import cached_file

    try:
        cached_file(name, "config.json")
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"{name}: no such directory, nor a model on the Hugging Face Hub ({reason})") from None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`, or a one-line error naming the file (and line) and the problem."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        if not text.strip():
            raise ValueError(f"{path}: empty file; a JSON object is expected")
        data = json.loads(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}:1: a JSON object is expected, found {type(data).__name__}")
    return data


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (one file, or the shards its index names, or a
    peft adapter's); [] for a PyTorch-format checkpoint. FileNotFoundError when there are no weights."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f'{index}: no "weight_map", so not a safetensors index')
        files = [directory / name for name in sorted(set(map(str, weight_map.values())))]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file}: missing (named in {index.name})")
        return files
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if (directory / "pytorch_model.bin").is_file():
        return []
    if (directory / "adapter_config.json").is_file() and (directory / "adapter_model.safetensors").is_file():
        return [directory / "adapter_model.safetensors"]  # a LoRA run's checkpoint or model (swcm.lora)
    raise FileNotFoundError(f"{directory}: no model weights (model.safetensors)")


def check_safetensors(path: Path) -> None:
    """A one-line ValueError unless `path` is a complete safetensors file: an 8-byte header
    length, a JSON header, and exactly the bytes the header's tensors describe."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or 8 + length > size:
            raise ValueError(f"{path}: truncated or corrupt safetensors file ({size:,} bytes; header length "
                             f"{'missing' if length is None else f'{length:,}'})")
        try:
            header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ValueError(f"{path}: corrupt safetensors file (unreadable header)") from None
    if 8 + length + end != size:
        state = "truncated" if 8 + length + end > size else "corrupt"
        raise ValueError(f"{path}: {state} safetensors file ({size:,} bytes; its header describes {8 + length + end:,})")


def seq2seq_model_types() -> set[str]:
    """Model types that transformers' AutoModelForSeq2SeqLM loads, and swcm's own."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return {*MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "swcm"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> None:
    """`tokenizer.save_pretrained(out_dir)`, loadable by transformers 4 and 5 alike.

    transformers 5 names a generic fast tokenizer `TokenizersBackend` in tokenizer_config.json,
    a class transformers 4 does not have; both load it as `PreTrainedTokenizerFast`, the name
    written instead (the stand-in encoder's tokenizers are such: see `swcm.encoders.tiny_encoder`).
    """
    tokenizer.save_pretrained(out_dir)
    config_file = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_model_dir(model, tokenizer, out_dir: str | os.PathLike, owner: str = "model") -> Path:
    """Save `model` (safetensors) and `tokenizer` to `out_dir` atomically (see
    `atomic_directory`; `owner` goes into its owner file); return the path."""
    with atomic_directory(out_dir, owner) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
    return Path(out_dir)
