"""Checks of a command's input before anything heavy starts: the engine folder, the ports, the device,
a Triton server to translate for. Each failure is a UserError: one line naming the problem and the fix
(a user's mistake, not our bug, so no traceback)."""

from __future__ import annotations

import errno
import json
import socket
import struct
import time
from pathlib import Path

from gemma_runtime.engine_format.files import ENGINE_JSON
from gemma_runtime.engine_format.spec import FORMAT_VERSION
from server.cli_errors import UserError

BUILD_HINT = "build one with `make engine MODEL=26b` (or 31b, tiny)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_engine_dir(engine: str | Path) -> Path:
    """An engine folder the runtime can load: engine.json of this format, every weight file whole, the tokenizer."""
    path = Path(engine).expanduser()
    if not path.exists():
        raise UserError(f"{engine} does not exist: {BUILD_HINT}, then pass its folder (ENGINE=engines/<name>)")
    if not path.is_dir():
        raise UserError(
            f"{engine} is a file, not an engine folder: pass the folder `make engine` wrote (engines/<name>)"
        )
    meta_path = path / ENGINE_JSON
    if not meta_path.is_file():
        half = any(path.glob("*.safetensors"))
        what = "a build that stopped half-way (weights but no engine.json)" if half else "not an engine: no engine.json"
        raise UserError(f"{engine} is {what}: {BUILD_HINT}")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not valid JSON ({e}): rebuild the engine with `make engine`") from None
    rebuild = _rebuild_hint(meta)
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{engine} was built by another builder (engine format {meta.get('format_version')!r}, builder "
            f"{meta.get('builder_version', 'unknown')}; this runtime reads format {FORMAT_VERSION}): {rebuild}"
        )
    for name in TOKENIZER_FILES:
        if not (path / name).is_file():
            raise UserError(f"{engine} is incomplete: {name} is missing: {rebuild}")
    for weights in _weight_files(path, rebuild):
        _check_safetensors(weights, rebuild)
    return path


def _rebuild_hint(meta: dict) -> str:
    source = (meta.get("source") or {}).get("checkpoint")
    return f"rebuild it with `make engine MODEL={source}`" if source else "rebuild it with `make engine`"


def _weight_files(path: Path, rebuild: str) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            raise UserError(f"{index} is damaged: {rebuild}") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise UserError(
                f"{path} is incomplete: {missing[0]} is missing ({len(missing)} of {len(names)} weight files): {rebuild}"
            )
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise UserError(f"{path} is incomplete: no model.safetensors nor model.safetensors.index.json: {rebuild}")


def _check_safetensors(file: Path, rebuild: str) -> None:
    """Reads the header only: a file cut short (a copy or download that stopped) is caught here,
    before the runtime maps it."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header past the end")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{file} is not a readable safetensors file (damaged or cut short): {rebuild}") from None
    if 8 + header_len + end > size:
        raise UserError(f"{file} is cut short ({size} of {8 + header_len + end} bytes): {rebuild}")


def check_port_free(host: str, port: int, how_to_change: str) -> None:
    """Fails when something already listens on host:port (another server, a previous run still up)."""
    if not 0 < port < 65536:
        raise UserError(f"port {port} is out of range (1-65535): {how_to_change}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except PermissionError:
            raise UserError(
                f"port {port} needs privileges on {host}: pick a port above 1023 ({how_to_change})"
            ) from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use (another server, or a previous run still up): "
                    f"stop it or pick another port ({how_to_change})"
                ) from None
            if e.errno in (errno.EADDRNOTAVAIL, socket.EAI_NONAME) or isinstance(e, socket.gaierror):
                raise UserError(
                    f"cannot listen on {host}: not an address of this machine (HOST=0.0.0.0 or 127.0.0.1)"
                ) from None
            raise


def check_device(device: str) -> None:
    """`cuda` needs a GPU torch can see; anything but cuda[:N] and cpu is a typo."""
    kind = device.split(":", 1)[0]
    if kind not in ("cuda", "cpu"):
        raise UserError(f"--device {device!r} is not a device: use cuda (a GPU) or cpu")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda: no CUDA GPU is visible here: run on a GPU machine, or pass --device cpu (slow; tests, demos)"
            )


def check_triton_reachable(uri: str, wait_s: float = 3.0) -> None:
    """The translator needs a Triton server to ask for its engine: fail now, in one line, when nothing
    listens at the URI's gRPC address (rather than after a 30 s discovery timeout with a traceback)."""
    from triton_bridge.client import parse_uri

    try:
        grpc_url, _, _ = parse_uri(uri)
    except ValueError:
        raise UserError(
            f"--backend {uri!r} is not a Triton address: use triton://HOST:PORT (its gRPC port, 8011 by default)"
        ) from None
    host, port = grpc_url.rsplit(":", 1)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"no Triton server answers at {grpc_url}: start one with `make triton ENGINE=engines/<name>` "
                    f"(it prints the address to use), or fix BACKEND"
                ) from None
            time.sleep(0.2)


def check_drafter(engine: str | Path, speculative: str) -> None:
    """--speculative mtp needs the drafter converted into the engine folder."""
    from gemma_runtime.speculative.registry import engine_has_drafter, missing_drafter_message

    if speculative == "mtp" and not engine_has_drafter(engine):
        raise UserError(missing_drafter_message(engine))
