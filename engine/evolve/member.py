"""One evaluated individual of a search, as plain data (what populations and checkpoints hold)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class Member:
    """A candidate (JSON data the search can rebuild a model from), its fitness and dev metrics."""

    candidate: Dict[str, Any]
    fitness: float
    metrics: Dict[str, float] = field(default_factory=dict)
    origin: str = "init"       # init | mutant | merged | reseed | start | cma
    born: int = 0              # the generation it was evaluated in
    error: str = ""            # why its merge failed (fitness 0), if it did

    def to_dict(self) -> Dict[str, Any]:
        return {"candidate": self.candidate, "fitness": self.fitness, "metrics": self.metrics,
                "origin": self.origin, "born": self.born, "error": self.error}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Member":
        return cls(dict(data["candidate"]), float(data["fitness"]), dict(data["metrics"]),
                   data["origin"], int(data["born"]), data.get("error", ""))
