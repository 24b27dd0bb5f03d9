"""The contracts' ABIs and bytecode (``contracts/abi/*.json``), and a small ABI codec on eth-abi.

The JSON files are committed by the contracts build and ship with the package (``veriswarm.abi``, mapped
to ``contracts/abi`` in pyproject.toml). Lookup order: ``$VERISWARM_ABI_DIR``, the packaged copy, the
checkout (``<repo>/contracts/abi``, for editable installs made before the mapping existed).

The codec encodes calls, decodes results (tuples become dicts keyed by component name, addresses are
checksummed), decodes events, and turns revert data into the custom error's name and arguments, using
the error definitions of every known contract (the names the Solidity code defines, e.g.
``AlreadyClaimed``, ``EvidenceAlreadyUsed``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak, to_checksum_address
from eth_utils.abi import collapse_if_tuple

from .errors import ChainError

ABI_DIR_ENV = "VERISWARM_ABI_DIR"
CONTRACTS = ("Staking", "Rewards")
_BUILTIN_ERRORS: dict[bytes, tuple[str, list[dict[str, Any]]]] = {
    keccak(text="Error(string)")[:4]: ("Error", [{"name": "message", "type": "string"}]),
    keccak(text="Panic(uint256)")[:4]: ("Panic", [{"name": "code", "type": "uint256"}]),
}


def abi_dir() -> Path:
    """The folder holding ``Staking.json`` and ``Rewards.json``."""
    env = os.environ.get(ABI_DIR_ENV)
    candidates: list[Path] = [Path(env)] if env else []
    try:  # a namespace package (no __init__.py): files() is a MultiplexedPath; joinpath gives a real file path
        packaged = resources.files("veriswarm.abi").joinpath("Staking.json")
        if isinstance(packaged, Path):
            candidates.append(packaged.parent)
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "contracts" / "abi")
    for folder in candidates:
        if (folder / "Staking.json").is_file():
            return folder
    raise ChainError(f"contract ABIs not found (looked in {', '.join(map(str, candidates))}); "
                     f"set {ABI_DIR_ENV} to a folder holding Staking.json and Rewards.json")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    path: Path


@functools.cache
def artifact(name: str) -> Artifact:
    path = abi_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text())
        code = data["bytecode"]
        return Artifact(name, data["abi"], bytes.fromhex(code[2:] if code.startswith("0x") else code), path)
    except (OSError, ValueError, KeyError) as exc:
        raise ChainError(f"cannot read contract artifact {path}: {exc}") from None


def _types(params: Sequence[dict[str, Any]]) -> list[str]:
    return [collapse_if_tuple(p) for p in params]


def _named(param: dict[str, Any], value: Any) -> Any:
    """Make a decoded value friendlier: tuples → dicts by component name, addresses checksummed."""
    kind: str = param["type"]
    if kind.endswith("]"):
        inner = dict(param, type=kind[: kind.rindex("[")])
        return [_named(inner, v) for v in value]
    if kind == "tuple":
        return {c["name"]: _named(c, v) for c, v in zip(param["components"], value, strict=True)}
    if kind == "address":
        return to_checksum_address(value)
    return value


@dataclass(frozen=True)
class Function:
    name: str
    selector: bytes
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    payable: bool

    def encode(self, args: Sequence[Any]) -> bytes:
        if len(args) != len(self.inputs):
            raise ChainError(f"{self.name} takes {len(self.inputs)} argument(s), got {len(args)}")
        return self.selector + encode(_types(self.inputs), list(args))

    def decode(self, data: bytes) -> Any:
        values = decode(_types(self.outputs), data)
        named = [_named(p, v) for p, v in zip(self.outputs, values, strict=True)]
        if len(named) == 1:
            return named[0]
        if named and all(p.get("name") for p in self.outputs):
            return {p["name"]: v for p, v in zip(self.outputs, named, strict=True)}
        return tuple(named)


@dataclass(frozen=True)
class Event:
    name: str
    topic: bytes
    inputs: list[dict[str, Any]]

    def decode(self, topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
        indexed = [p for p in self.inputs if p.get("indexed")]
        plain = [p for p in self.inputs if not p.get("indexed")]
        out: dict[str, Any] = {}
        for p, t in zip(indexed, topics[1:], strict=True):
            out[p["name"]] = _named(p, decode([collapse_if_tuple(p)], t)[0]) if _static(p) else t
        for p, v in zip(plain, decode(_types(plain), data), strict=True):
            out[p["name"]] = _named(p, v)
        return out


def _static(param: dict[str, Any]) -> bool:
    return param["type"] not in ("string", "bytes", "tuple") and not param["type"].endswith("]")


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(_types(item.get('inputs', [])))})"


@dataclass
class ContractABI:
    name: str
    functions: dict[str, Function] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    errors: dict[bytes, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    constructor_inputs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_abi(cls, name: str, abi: list[dict[str, Any]]) -> ContractABI:
        out = cls(name)
        for item in abi:
            kind = item["type"]
            if kind == "function":
                if item["name"] in out.functions:
                    raise ChainError(f"{name}.{item['name']} is overloaded; the codec addresses functions by name")
                out.functions[item["name"]] = Function(item["name"], keccak(text=_signature(item))[:4], item["inputs"],
                                                       item.get("outputs", []), item.get("stateMutability") == "payable")
            elif kind == "event":
                out.events[item["name"]] = Event(item["name"], keccak(text=_signature(item)), item["inputs"])
            elif kind == "error":
                out.errors[keccak(text=_signature(item))[:4]] = (item["name"], item["inputs"])
            elif kind == "constructor":
                out.constructor_inputs = item["inputs"]
        return out

    def function(self, name: str) -> Function:
        try:
            return self.functions[name]
        except KeyError:
            raise ChainError(f"{self.name} has no function {name!r}") from None

    def encode_constructor(self, args: Sequence[Any]) -> bytes:
        return encode(_types(self.constructor_inputs), list(args)) if self.constructor_inputs else b""

    def decode_log(self, topics: Sequence[bytes], data: bytes) -> tuple[str, dict[str, Any]] | None:
        if not topics:
            return None
        for ev in self.events.values():
            if ev.topic == topics[0]:
                try:
                    return ev.name, ev.decode(topics, data)
                except (DecodingError, ValueError):
                    return None
        return None


@functools.cache
def contract_abi(name: str) -> ContractABI:
    return ContractABI.from_abi(name, artifact(name).abi)


@dataclass(frozen=True)
class DecodedError:
    name: str
    args: dict[str, Any]

    def __str__(self) -> str:
        def show(v: Any) -> str:
            return "0x" + v.hex() if isinstance(v, bytes) else str(v)

        return f"{self.name}({', '.join(f'{k}={show(v)}' for k, v in self.args.items())})"


def decode_revert(data: bytes, contracts: Sequence[str] = CONTRACTS) -> DecodedError | None:
    """Name and arguments of the custom error (or Error/Panic) in revert ``data``; None if unknown."""
    if len(data) < 4:
        return None
    table = dict(_BUILTIN_ERRORS)
    for c in contracts:
        table.update(contract_abi(c).errors)
    found = table.get(data[:4])
    if found is None:
        return None
    name, inputs = found
    try:
        values = decode(_types(inputs), data[4:])
    except (DecodingError, ValueError):
        return DecodedError(name, {})
    return DecodedError(name, {(p.get("name") or f"arg{i}"): _named(p, v)
                               for i, (p, v) in enumerate(zip(inputs, values, strict=True))})
