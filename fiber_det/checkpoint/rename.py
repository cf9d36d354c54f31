"""Pure renaming of state dicts: ordered `RenameRule`s and `DropRule`s.

No model is built here. A conversion is an ordered list of `RenameRule`s (regular expressions
anchored at the start of a key; the first rule that matches wins) plus `DropRule`s for keys
that are deliberately not carried over, each with its reason. Every key of an input state dict
is either renamed, dropped with a reason, or reported as unconverted.
"""

import re
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RenameRule:
    """Rename keys matching `pattern` (a regex matched at the key's start) to `replacement`."""

    pattern: str
    replacement: str


@dataclass(frozen=True)
class DropRule:
    """Keys matching `pattern` are not carried over, for `reason`."""

    pattern: str
    reason: str


@dataclass
class ConversionResult:
    """What `rename_state_dict` produced: the renamed tensors and every key it did not map."""

    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    unconverted: list[str] = field(default_factory=list)


def rename_key(key: str, rules: list[RenameRule]) -> str | None:
    """The new name of `key` under the first matching rule, or None when no rule matches."""
    for rule in rules:
        new_key, count = re.subn(f"^(?:{rule.pattern})", rule.replacement, key, count=1)
        if count:
            return new_key
    return None


def rename_state_dict(
    state_dict: dict[str, torch.Tensor],
    rules: list[RenameRule],
    drops: list[DropRule] = (),
) -> ConversionResult:
    """Apply `drops` then `rules` to every key; collisions of two keys on one name raise."""
    result = ConversionResult(state_dict={})
    for key, tensor in state_dict.items():
        reason = next((d.reason for d in drops if re.match(d.pattern, key)), None)
        if reason is not None:
            result.dropped[key] = reason
            continue
        new_key = rename_key(key, rules)
        if new_key is None:
            result.unconverted.append(key)
            continue
        if new_key in result.state_dict:
            raise ValueError(f"two checkpoint keys map onto '{new_key}' (the second is '{key}')")
        result.state_dict[new_key] = tensor
    return result


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove `prefix` (e.g. 'module.') from every key that starts with it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
