"""The two passes of a plan, per model: keep what is still valid, then place the rest.

:class:`Placer` holds the memory handed out so far (in its :class:`Pool`) and each model's kept
replicas between the passes.  Both ``plan()`` and the incremental re-plan drive it the same way, which
is what makes their results identical.
"""

from __future__ import annotations

from collections.abc import Mapping

from berth.scheduler import filters, reasons
from berth.scheduler.index import Candidates
from berth.scheduler.pool import Pool, Slot
from berth.scheduler.snapshot import ModelPlan, ModelWant, Rejection, ReplicaRef
from berth.scheduler.summary import combine, explain, failure_message, replicas_phrase, server_lines


def success_message(replicas: tuple[ReplicaRef, ...]) -> str:
    if len(replicas) == 1:
        return f"scheduled on {replicas[0].server} replica {replicas[0].index}"
    return f"scheduled on {replicas[0].server} " + replicas_phrase([r.index for r in replicas])


_NONE: list[Slot] = []  # no kept replicas (never mutated)
_new_tuple = tuple.__new__


def _plan_of(name: str, desired: int, refs: tuple[ReplicaRef, ...], message: str) -> ModelPlan:
    """A Scheduled ModelPlan, built without the NamedTuple's Python-level ``__new__``."""
    plan: ModelPlan = _new_tuple(ModelPlan, (name, desired, refs, "Scheduled", message, ()))
    return plan


def _refs(slots: list[Slot]) -> tuple[ReplicaRef, ...]:
    return tuple(s.ref for s in slots)


Route = tuple[str | None, Rejection | None, frozenset[str], Candidates | None]
Print = tuple[ModelWant, tuple[Slot, ...], tuple[int, ...]]


class Placer:
    def __init__(self, pool: Pool, assignments: Mapping[str, tuple[ReplicaRef, ...]],
                 previous: Mapping[str, ModelPlan], prints: Mapping[str, Print] | None = None) -> None:
        self.pool = pool
        # pinned models that failed, by name: what their outcome depended on (see _pinned_print), in the
        # previous plan (``prints``, whose ModelPlans are ``previous``) and in this one
        self.prints_before: Mapping[str, Print] = prints or {}
        self.prints: dict[str, Print] = {}
        self.assignments = assignments
        self.previous = previous  # earlier ModelPlans, reused when identical (saves building them)
        self.kept: dict[str, list[Slot]] = {}
        self.spread = pool.policy == "spread"
        # filters 1-2 depend on spec.server and the requirements alone, and so does the candidate set:
        # computed once per (server, requirements) group, not per model
        self._routes: dict[tuple[str | None, tuple[str, ...]], Route] = {}
        # refs and success message by the replicas chosen (Slot objects): many models share a set
        self._combos: dict[tuple[Slot, ...], tuple[tuple[ReplicaRef, ...], str]] = {}
        self._pins: dict[tuple[str | None, tuple[str, ...]], tuple[str | None, Rejection | None]] = {}
        # hopeless_again's answers by (spec.server, requirements, the previous memo entry): the same for every
        # model of a group, so worked out once per group
        self._again: dict[tuple[str | None, tuple[str, ...], int], tuple[tuple[Rejection, ...], str] | None] = {}

    def _route(self, model: ModelWant) -> Route:
        """(pin, rejection, requirements, candidates) of the model's group: ``candidates`` is the indexed
        candidate set when the model may go to any server (no pin, no rejection, some server, indexed)."""
        key = (model.server, model.requirements)
        found = self._routes.get(key)
        if found is None:
            pin, rejection = filters.resolve_pin(model, self.pool)
            reqs = frozenset(model.requirements)
            pool = self.pool
            cands = pool.candidates(reqs) if rejection is None and pin is None and pool.indexed and pool.names \
                else None
            found = self._routes[key] = (pin, rejection, reqs, cands)
        return found

    def keep(self, model: ModelWant) -> None:
        """Pass 1: keep the model on the replicas it is assigned to that are all still valid for it."""
        if model.deleting or model.replicas <= 0:
            return
        refs = self.assignments.get(model.name)
        if not refs:
            return
        server, rejection, reqs, _ = self._route(model)
        if rejection is not None:
            return
        slots = self.pool.slots
        kept: list[Slot] = []
        for ref in refs:
            slot = slots.get(ref)  # a ReplicaRef equals its (server, index) key
            if slot is None or not slot.usable or slot in kept:
                continue
            if server is not None and slot.server != server:
                continue
            if not reqs <= slot.caps or slot.capacity - slot.used < model.memory:
                continue
            kept.append(slot)
            server = slot.server
            if len(kept) >= model.replicas:
                break
        if kept:
            self.pool.take(kept, model.memory)
            self.kept[model.name] = kept

    def _scheduled(self, model: ModelWant, slots: list[Slot]) -> ModelPlan:
        if len(slots) != 1:
            return self._scheduled_together(model, slots)
        slot = slots[0]
        alone = slot.alone  # the refs and message of one replica, shared (as in place_all)
        if alone is None:
            refs = (slot.ref,)
            alone = slot.alone = (refs, success_message(refs))
        old = self.previous.get(model.name)
        if old is not None and old.state == "Scheduled" and old.desired == model.replicas \
                and old.replicas == alone[0]:
            return old
        return _plan_of(model.name, model.replicas, alone[0], alone[1])

    def _scheduled_together(self, model: ModelWant, slots: list[Slot]) -> ModelPlan:
        """``_scheduled`` with the refs and message of a set of replicas built once per plan."""
        combo = tuple(slots)
        found = self._combos.get(combo)
        if found is None:
            refs = _refs(slots)
            found = self._combos[combo] = (refs, success_message(refs))
        old = self.previous.get(model.name)
        if old is not None and old.state == "Scheduled" and old.desired == model.replicas \
                and old.replicas == found[0]:
            return old
        return _plan_of(model.name, model.replicas, found[0], found[1])

    def place_all(self, names: list[str], wants: Mapping[str, ModelWant]) -> dict[str, ModelPlan]:
        """Pass 2 for ``names`` in that order: ``place`` for each, with its most common case (nothing kept,
        any server, a fit found) inlined — a plan of 100,000 models spends most of its time here."""
        out: dict[str, ModelPlan] = {}
        routes, kept_of, previous, spread = self._routes, self.kept, self.previous, self.spread
        place, route_of, together = self.place, self._route, self._scheduled_together
        for name in names:
            model = wants[name]
            desired = model.replicas
            if desired > 0 and not model.deleting and name not in kept_of:
                cands = (routes.get((model.server, model.requirements)) or route_of(model))[3]
                if cands is not None:
                    tree = cands.trees.get(desired) or cands.tree(desired)
                    memory = model.memory
                    if desired == 1:
                        slot = tree.first_one(memory, spread)
                        if slot is not None:
                            slot.used += memory
                            alone = slot.alone
                            if alone is None:
                                refs = (slot.ref,)
                                alone = slot.alone = (refs, success_message(refs))
                            old = previous.get(name)
                            if old is not None and old.state == "Scheduled" and old.desired == 1 \
                                    and old.replicas == alone[0]:
                                out[name] = old
                            else:
                                out[name] = _new_tuple(ModelPlan, (name, 1, alone[0], "Scheduled", alone[1], ()))
                            continue
                    else:
                        chosen = tree.first_k(memory, spread)
                        if chosen is not None:
                            for slot in chosen:
                                slot.used += memory
                            out[name] = together(model, chosen)
                            continue
            out[name] = place(model)
        return out

    def _move(self, model: ModelWant, kept: list[Slot], chosen: list[Slot]) -> None:
        if not kept:
            self.pool.take(chosen, model.memory)
            return
        self.pool.give_back([s for s in kept if s not in chosen], model.memory)
        self.pool.take([s for s in chosen if s not in kept], model.memory)

    def place(self, model: ModelWant) -> ModelPlan:
        """Pass 2: where the model should be, and why every candidate it does not use was rejected."""
        if model.deleting:
            return ModelPlan(model.name, 0, (), "Deleting", "model is being deleted")
        desired = model.replicas
        if desired <= 0:
            return ModelPlan(model.name, 0, (), "Scheduled", "spec.replicas is 0: nothing to place")
        pin, rejection, reqs, cands = self._route(model)
        kept = self.kept.get(model.name)
        if kept is None and cands is not None:
            # the common case, fast: nothing kept, any server: the first fitting server through the index,
            # then the policy's replicas (what find_full and pick do for it, fused); reasons only on failure
            chosen = cands.tree(desired).first_k(model.memory, self.spread)
            if chosen is not None:
                for slot in chosen:
                    slot.used += model.memory
                return self._scheduled_together(model, chosen)
        if kept is None:
            kept = _NONE
        elif len(kept) >= desired:
            return self._scheduled(model, kept)
        if rejection is not None:
            return self._failed(model, [rejection], kept)
        if pin is None and not self.pool.names:
            return self._failed(model, [reasons.no_servers(self.pool.namespace)], kept)
        fingerprint = None
        if pin is not None and not kept:
            before = self.prints_before.get(model.name)
            old = self.previous.get(model.name)
            if before is not None and old is not None:
                fingerprint = self._pinned_print(model, pin)
                if before[1] == fingerprint[1] and before[2] == fingerprint[2] \
                        and (before[0] is model or before[0] == model):
                    self.prints[model.name] = fingerprint
                    return old  # it failed on this very server in this very state: the same outcome, reasons and all
        found = filters.find_full(self.pool, model, reqs, pin, kept)
        if found is not None:
            chosen = self.pool.pick(found[1], kept, desired)
            self._move(model, kept, chosen)
            return self._scheduled(model, chosen)
        result = self._short(model, reqs, pin, kept)
        if pin is not None and not kept and result.state == "ScheduleFailed" and not result.replicas:
            # nothing was taken on the way to this outcome: the memory in use is what it was at the model's turn
            self.prints[model.name] = fingerprint if fingerprint is not None else self._pinned_print(model, pin)
        return result

    def _pinned_print(self, model: ModelWant, pin: str) -> Print:
        """What the outcome of ``model``, pinned to ``pin`` with nothing kept, depends on: the model, the
        server's replicas (Slot objects: a changed report or declaration makes new ones) and their memory
        in use at this point of the plan.  (Rejections of other servers are not part of a pinned outcome.)"""
        slots = tuple(self.pool.by_server.get(pin, ()))
        return model, slots, tuple([s.used for s in slots])

    def _unfit(self, model: ModelWant, reqs: frozenset[str], name: str) -> tuple[list[Rejection], list[str]]:
        """A server none of whose replicas is usable and capable: its rejections depend on the
        requirements alone (no memory figure), so models that share them share these."""
        key = (model.requirements, name)
        found = self.pool.unfit.get(key)
        if found is None:
            found = filters.uniform_incapable(self.pool, model, reqs, name)
            if found is None:
                out: list[Rejection] = []
                filters.evaluate(self.pool, model, reqs, name, [], out)
                found = (out, server_lines(out))
            self.pool.unfit[key] = found
        return found

    def _hopeless(self, model: ModelWant, reqs: frozenset[str], pin: str | None) -> ModelPlan:
        """No candidate server has a usable replica offering the requirements: the outcome depends on
        the requirements and the pin alone, so models that share them share it."""
        key = (model.requirements, pin)
        found = self.pool.hopeless.get(key)
        if found is None:
            rejections: list[Rejection] = []
            chunks: list[list[str]] = []
            for name in ([pin] if pin is not None else self.pool.names):
                got, lines = self._unfit(model, reqs, name)
                rejections.extend(got)
                chunks.append(lines)
            found = self.pool.hopeless[key] = (tuple(rejections), failure_message(combine([], chunks), False))
        plan: ModelPlan = _new_tuple(ModelPlan, (model.name, model.replicas, (), "ScheduleFailed", found[1], found[0]))
        return plan

    def hopeless_again(self, model: ModelWant, before: tuple[tuple[Rejection, ...], str]
                       ) -> tuple[tuple[Rejection, ...], str] | None:
        """For ``model`` (unchanged, nothing assigned), which no server could take in the previous plan
        (``before``: that plan's memo entry its ModelPlan was built from): its outcome in this pool when no
        server can take it still — the memo entry ``place`` would build its ModelPlan from — else None.
        When the entry comes out equal to ``before``, this pool's memo holds ``before`` itself (the previous
        ModelPlan stands as it is).  Made once per (requirements, pin), not per model: a re-plan after a
        server changed does not place every such model again."""
        again_key = (model.server, model.requirements, id(before[0]))  # ``before`` outlives this placer
        try:
            return self._again[again_key]  # one look-up for all but the first model of a group
        except KeyError:
            pass
        found = self._again[again_key] = self._hopeless_again(model, before)
        return found

    def _hopeless_again(self, model: ModelWant, before: tuple[tuple[Rejection, ...], str]
                        ) -> tuple[tuple[Rejection, ...], str] | None:
        key = (model.server, model.requirements)
        resolved = self._pins.get(key)
        if resolved is None:
            resolved = self._pins[key] = filters.resolve_pin(model, self.pool)
        pin, rejection = resolved
        if rejection is not None or (pin is None and not self.pool.names):
            return None
        reqs = frozenset(model.requirements)
        capable, _ = self.pool.eligible(reqs)
        if capable if pin is None else pin in capable:
            return None
        memo = self.pool.hopeless
        found = memo.get((model.requirements, pin))
        if found is None:
            self._hopeless(model, reqs, pin)
            found = memo[(model.requirements, pin)]
        if found is not before and found == before:
            memo[(model.requirements, pin)] = found = before
        return found

    def _short(self, model: ModelWant, reqs: frozenset[str], pin: str | None,
               kept: list[Slot]) -> ModelPlan:
        """No server takes every replica: record every rejection, place partially if allowed."""
        desired = model.replicas
        capable, _ = self.pool.eligible(reqs)
        if not kept and (not capable if pin is None else pin not in capable):
            return self._hopeless(model, reqs, pin)
        rejections: list[Rejection] = []
        chunks: list[list[str]] = []
        short: list[Rejection] = []
        suitable: dict[str, list[Slot]] = {}
        for name in ([pin] if pin is not None else self.pool.names):
            if name not in capable:
                found, lines = self._unfit(model, reqs, name)
                rejections.extend(found)
                chunks.append(lines)
                continue
            out: list[Rejection] = []
            got = suitable[name] = filters.evaluate(self.pool, model, reqs, name, kept, out)
            if 0 < len(got) < desired:
                short.append(reasons.not_enough_replicas(name, desired, len(got),
                                                         filters.server_size(self.pool, name)))
                out.append(short[-1])
            rejections.extend(out)
            chunks.append(server_lines(out))
        holder = kept[0].server if kept else None
        best: str | None = None
        for name in ([holder] if holder is not None else []) + list(suitable):
            if suitable[name] and (best is None or len(suitable[name]) > len(suitable[best])):
                best = name
        lines = combine(short, chunks)
        floor = max(1, min(model.min_replicas, desired)) if model.min_replicas is not None else None
        if floor is not None and best is not None and len(suitable[best]) >= floor:
            chosen = self.pool.order(suitable[best], kept)[:desired]
            self._move(model, kept, chosen)
            refs = _refs(chosen)
            message = (f"scheduled {len(chosen)} of {desired} replicas on {best} "
                       f"({replicas_phrase([r.index for r in refs])}); "
                       f"{desired - len(chosen)} missing: {'; '.join(lines)}")
            return ModelPlan(model.name, desired, refs, "PartiallyScheduled", message, tuple(rejections))
        return self._failed(model, rejections, kept, failure_message(lines, bool(short)))

    def _failed(self, model: ModelWant, rejections: list[Rejection], kept: list[Slot],
                message: str | None = None) -> ModelPlan:
        """ScheduleFailed.  Like Seldon, a model keeps the valid replicas it already had meanwhile."""
        if message is None:
            message = failure_message(explain(rejections), False)
        if kept:
            message += (f"; it stays on {kept[0].server} "
                        f"{replicas_phrase([s.index for s in kept])} meanwhile")
        return ModelPlan(model.name, model.replicas, _refs(kept), "ScheduleFailed", message,
                         tuple(rejections))
