"""Tamiyo's heuristic: plateau detection, germination, blueprint rotation, advancing and judging seeds."""

from __future__ import annotations

from esper_tui.engine.config import TrainingConfig
from esper_tui.engine.contracts import SeedHealth
from esper_tui.engine.kernels.catalog import Catalog
from esper_tui.engine.kernels.shapes import SlotShape, vector
from esper_tui.engine.training.controller import Controller, Decision, EpochState
from esper_tui.engine.training.kernel_source import EagerKernelSource, KernelOffer
from esper_tui.engine.vocabulary import Action, SeedStage

S = SeedStage
CFG = TrainingConfig(plateau_epochs=3, plateau_delta=0.005, train_epochs=2, blend_epochs=5, holding_epochs=2)
CATALOG = Catalog()
MNIST1D = vector(40, 64)
OFFERS = tuple(EagerKernelSource(CATALOG).offers(MNIST1D))
# The controller tries high-priority families first, then low risk.
RANK_ORDER = [
    b.blueprint_id for b in sorted(CATALOG.fitting(MNIST1D), key=lambda b: (-b.priority, b.risk, b.blueprint_id))
]
FLAT = [0.3, 0.5, 0.6, 0.6, 0.6, 0.6]  # flat for 3 epochs after the 0.6 best


def seed(
    slot: str = "s0",
    stage: SeedStage = S.DORMANT,
    *,
    epochs: int = 0,
    delta: float | None = None,
    bp: str | None = None,
    vanishing: bool = False,
    exploding: bool = False,
) -> SeedHealth:
    return SeedHealth(
        slot=slot,
        stage=stage,
        blueprint_id=bp,
        alpha=0.0,
        grad_norm=0.1,
        gain=delta,
        epochs_in_stage=epochs,
        kernel="-",
        vanishing=vanishing,
        exploding=exploding,
    )


def dormant() -> tuple[SeedHealth, ...]:
    return seed("s0"), seed("s1")


_EPOCHS: dict[int, int] = {}  # per controller: the epochs it has been fed


def next_epoch(ctl: Controller) -> int:
    _EPOCHS[id(ctl)] = _EPOCHS.get(id(ctl), 0) + 1
    return _EPOCHS[id(ctl)]


def feed(
    ctl: Controller,
    accuracies: list[float],
    seeds: tuple[SeedHealth, ...] | None = None,
    offers: tuple[KernelOffer, ...] = OFFERS,
) -> list[Decision]:
    """Feed epochs (numbered on from the last one fed); return the last epoch's decisions."""
    out: list[Decision] = []
    for acc in accuracies:
        out = ctl.decide(EpochState(next_epoch(ctl), acc, seeds or dormant(), offers))
    return out


def acting(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.action is not Action.WAIT]


# ---------------------------------------------------------------- plateau and germination


def test_no_germination_while_accuracy_improves() -> None:
    ctl = Controller(CFG, CATALOG)
    decisions = feed(ctl, [0.1 * i for i in range(1, 9)])
    assert decisions[0].action is Action.WAIT and "improving" in decisions[0].reason
    assert ctl.plateau() is None


def test_small_gains_below_delta_count_as_flat() -> None:
    ctl = Controller(CFG, CATALOG)
    feed(ctl, [0.3, 0.5, 0.6, 0.602, 0.604])
    assert ctl.plateau() is None  # only two flat epochs
    decisions = feed(ctl, [0.6045])
    assert ctl.plateau() == 3
    reason = "accuracy flat for 3 epochs at 60.5 %"
    assert decisions == [Decision(Action.GERMINATE, "s0", RANK_ORDER[0], reason)]


def test_germinate_picks_a_dormant_slot() -> None:
    ctl = Controller(CFG, CATALOG)
    seeds = (seed("s0", S.FOSSILIZED, bp="conv1d_block", delta=0.1), seed("s1", S.EMBARGOED), seed("s2"))
    [d] = feed(ctl, FLAT, seeds)
    assert (d.action, d.slot) == (Action.GERMINATE, "s2")


def test_no_germination_without_offers_or_dormant_slot_or_while_a_seed_is_in_flight() -> None:
    [d] = feed(Controller(CFG, CATALOG), FLAT, offers=())
    assert d.action is Action.WAIT and "no kernels offered" in d.reason
    [d] = feed(Controller(CFG, CATALOG), FLAT, (seed("s0", S.FOSSILIZED), seed("s1", S.EMBARGOED)))
    assert d.action is Action.WAIT and "no dormant slot" in d.reason
    [d] = feed(Controller(CFG, CATALOG), FLAT, (seed("s0", S.TRAINING, epochs=1), seed("s1")))
    assert d.action is Action.WAIT and "in flight" in d.reason
    unknown = (KernelOffer("not_in_catalog", None, (), 0.0, "eager", None, None),)
    [d] = feed(Controller(CFG, CATALOG), FLAT, offers=unknown)
    assert d.action is Action.WAIT


def test_rotation_and_prune_penalty() -> None:
    ctl = Controller(CFG, CATALOG)
    first = feed(ctl, FLAT)[0].blueprint_id
    second = feed(ctl, [0.6])[0].blueprint_id
    third = feed(ctl, [0.6])[0].blueprint_id
    assert [first, second, third] == RANK_ORDER[:3]  # rotation: least tried, then priority, then risk

    # the second blueprint gets pruned: it drops behind everything pruned fewer times
    holding = seed("s0", S.HOLDING, epochs=2, delta=-0.02, bp=second)
    assert ctl.decide(EpochState(next_epoch(ctl), 0.6, (holding, seed("s1")), OFFERS))[0].action is Action.PRUNE
    picks = [feed(ctl, FLAT)[0].blueprint_id]
    picks += [feed(ctl, [0.6])[0].blueprint_id for _ in range(2 * len(OFFERS))]
    assert picks[:6] == [*RANK_ORDER[3:], first, third]
    assert second not in picks
    only_pruned = tuple(o for o in OFFERS if o.blueprint_id == second)
    assert feed(ctl, [0.6], offers=only_pruned)[0].blueprint_id == second  # penalised, not banned


def test_step_time_breaks_risk_ties() -> None:
    # three blueprints of equal catalog priority and equal offered risk: the measured step time decides
    a = KernelOffer("mlp_block", "a1", (), 0.2, "inductor:default", 9.0, 5.0)
    b = KernelOffer("depthwise_conv", "b1", (), 0.2, "inductor:default", 3.0, 5.0)
    c = KernelOffer("residual_block", None, (), 0.2, "eager", None, 1.0)
    assert {CATALOG.get(o.blueprint_id).priority for o in (a, b, c)} == {2}
    assert [o.blueprint_id for o in Controller(CFG, CATALOG).rank((a, b, c))] == [
        "residual_block",
        "depthwise_conv",
        "mlp_block",
    ]


def test_catalog_priority_ranks_before_risk() -> None:
    low_risk = KernelOffer("lowrank_adapter", "l", (), 0.05, "inductor:default", 1.0, 1.0)
    conv = KernelOffer("conv1d_block", "c", (), 0.3, "inductor:default", 5.0, 5.0)
    assert Controller(CFG, CATALOG).rank((low_risk, conv))[0].blueprint_id == "conv1d_block"


# ---------------------------------------------------------------- slot shapes

IMAGE = SlotShape((8, 8, 8), (16, 8, 8))


def test_the_eager_source_offers_only_blueprints_that_fit_the_shape() -> None:
    source = EagerKernelSource(CATALOG)
    for shape in (MNIST1D, IMAGE, SlotShape((4, 16), (6, 16))):
        offers = source.offers(shape)
        assert {o.blueprint_id for o in offers} == {b.blueprint_id for b in CATALOG.fitting(shape)}
        assert all(o.shape == shape.tag for o in offers)
    assert "conv2d_block" not in {o.blueprint_id for o in OFFERS} and "mlp_block" in {o.blueprint_id for o in OFFERS}


def test_a_blueprint_is_never_germinated_in_a_slot_it_does_not_fit() -> None:
    """Two dormant slots of different shapes: each gets only what was offered for its shape."""
    source = EagerKernelSource(CATALOG)
    offers = tuple(source.offers(IMAGE)) + OFFERS
    shapes = {"s0": IMAGE.tag, "s1": MNIST1D.tag}
    ctl = Controller(CFG, CATALOG)
    picked: list[tuple[str, str]] = []
    for i, acc in enumerate(FLAT + [0.6] * 20):
        [d] = ctl.decide(EpochState(i + 1, acc, dormant(), offers, slot_shapes=shapes))
        if d.action is Action.GERMINATE:
            assert d.slot is not None and d.blueprint_id is not None
            picked.append((d.slot, d.blueprint_id))
    assert picked and {slot for slot, _ in picked} == {"s0", "s1"}
    for slot, bp in picked:
        assert CATALOG.fits(bp, IMAGE if slot == "s0" else MNIST1D), (slot, bp)
    # no offer fits the only dormant slot: Tamiyo waits and says so
    only_image = tuple(source.offers(IMAGE))
    ctl = Controller(CFG, CATALOG)
    for i, acc in enumerate(FLAT):
        [d] = ctl.decide(EpochState(i + 1, acc, (seed("s1"),), only_image, slot_shapes=shapes))
    assert d.action is Action.WAIT and "no offered blueprint fits a free slot" in d.reason


# ---------------------------------------------------------------- advancing and judging


def test_stage_advancement_by_epochs_in_stage() -> None:
    cases = [
        (S.GERMINATED, 1, True),
        (S.GERMINATED, 0, False),
        (S.TRAINING, 1, False),
        (S.TRAINING, 2, True),
        (S.BLENDING, 4, False),
        (S.BLENDING, 5, True),
        (S.HOLDING, 1, False),
    ]
    for stage, epochs, advances in cases:
        decisions = Controller(CFG, CATALOG).decide(
            EpochState(1, 0.6, (seed("s0", stage, epochs=epochs, delta=0.0, bp="mlp_block"),), OFFERS)
        )
        assert (decisions[0].action is Action.ADVANCE) == advances, (stage, epochs)
        if advances:
            assert (decisions[0].slot, decisions[0].blueprint_id) == ("s0", "mlp_block")


def test_holding_verdicts() -> None:
    def verdict(delta: float, epochs: int = 2) -> Decision:
        holding = seed("s1", S.HOLDING, epochs=epochs, delta=delta, bp="conv1d_block")
        state = EpochState(1, 0.7, (holding,), OFFERS)
        return Controller(CFG, CATALOG).decide(state)[0]

    gain = verdict(0.05)
    assert gain.action is Action.FOSSILIZE
    assert gain.reason == "accuracy +5.0 points since germination, now 70.0 %"
    assert verdict(-0.01).action is Action.PRUNE
    assert verdict(0.001).action is Action.WAIT  # too small to call: hold on
    assert verdict(0.001, epochs=4).action is Action.PRUNE  # still nothing after twice the hold


def test_unhealthy_or_collapsing_seeds_are_pruned_at_once() -> None:
    for s in (
        seed("s0", S.TRAINING, exploding=True, bp="x", delta=0.0),
        seed("s0", S.BLENDING, vanishing=True, bp="x", delta=0.0),
        seed("s0", S.BLENDING, epochs=1, delta=-0.08, bp="x"),
    ):
        [d] = Controller(CFG, CATALOG).decide(EpochState(1, 0.5, (s,), OFFERS))
        assert d.action is Action.PRUNE, s
    # a fossilized seed is permanent, whatever its health
    fossil = seed("s0", S.FOSSILIZED, exploding=True)
    [d] = Controller(CFG, CATALOG).decide(EpochState(1, 0.5, (fossil,), OFFERS))
    assert d.action is Action.WAIT


def test_judging_restarts_the_plateau_window() -> None:
    ctl = Controller(CFG, CATALOG)
    feed(ctl, FLAT[:-1])
    ctl.decide(EpochState(5, 0.6, (seed("s0", S.HOLDING, epochs=2, delta=0.05, bp="mlp_block"),), OFFERS))
    assert ctl.plateau() is None
    assert [d.action for d in feed(ctl, [0.6, 0.6, 0.6])] == [Action.WAIT]
    assert [d.action for d in feed(ctl, [0.6])] == [Action.GERMINATE]


def test_decisions_are_deterministic_for_a_history() -> None:
    history = [0.2, 0.4, 0.5, 0.52, 0.51, 0.52, 0.515, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]

    def run() -> list[list[Decision]]:
        ctl = Controller(CFG, CATALOG)
        return [ctl.decide(EpochState(i, a, dormant(), OFFERS)) for i, a in enumerate(history)]

    assert run() == run()
