"""Structure attacks on a GCN (poisoning): Metattack (Meta-Self), greedy gradient flips and PGD.

    python experiments/structure_attack.py --config configs/structure_attack.yaml [--only meta] [--set a.b=c]
    python experiments/structure_attack.py --config configs/structure_attack.yaml --evaluate [--only meta]
    python experiments/structure_attack.py --config configs/structure_attack.yaml --report

For each seed: a stratified random 10% / 10% / 80% split of the largest connected component, the attack
at the largest budget (greedy attacks are evaluated at every budget from prefixes of the same run, PGD
runs once per budget), and ``eval.victim_runs`` GCNs retrained on each perturbed graph, under both
victim model-selection rules (`jgrad.attacks.GCNConfig.selection`; ``eval.selection`` is the one
reported). Each attack writes ``<output>_<attack>.json`` with its flips; ``--evaluate`` retrains the
victims on those flips without attacking again; ``--report`` merges the files into ``<output>.json``,
``.md`` and ``.png`` next to the published Metattack numbers of Pro-GNN (Jin et al., 2020, Table 2,
GCN on Cora). The ``scale`` entry times a few meta-gradient steps on a large CSBM graph.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jgrad import attacks
from jgrad.config import apply_overrides, config_from_dict, read_yaml
from jgrad.data import csbm, karate_club, load, load_planetoid

PUBLISHED = {  # Pro-GNN Table 2, GCN under Metattack on Cora (LCC), mean ± std of test accuracy in %
    0.0: (83.50, 0.44), 0.05: (76.55, 0.79), 0.10: (70.39, 1.28),
    0.15: (65.10, 0.71), 0.20: (59.56, 2.72), 0.25: (47.53, 1.96),
}
ATTACKS = ("meta", "gradient", "pgd", "scale")
SELECTIONS = ("loss_or_accuracy", "accuracy")  # victim model-selection rules, jgrad.attacks.GCNConfig.selection
SELECTION_TEXT = {
    "loss_or_accuracy": "the last epoch that improved the best validation loss or accuracy (the reference GCN's rule)",
    "accuracy": "the epoch of the best validation accuracy",
}


@dataclasses.dataclass(frozen=True)
class DataSection:
    name: str = "cora"  # a jgrad.data.load name (cora, citeseer, cora_npz, cora_ml, polblogs, ...) or csbm
    root: str | None = None  # a Planetoid folder to read instead of the shipped data
    largest_component: bool = True
    normalize_features: bool = True  # planetoid: rows sum to 1; false keeps the raw binary features
    train: float = 0.1
    val: float = 0.1
    n_nodes: int = 500  # csbm only
    n_classes: int = 3
    avg_degree: float = 6.0
    homophily: float = 0.8
    feature_dim: int = 16
    signal: float = 1.0


@dataclasses.dataclass(frozen=True)
class AttackSection:
    attacks: str = "meta,gradient,pgd"  # comma-separated subset of meta, gradient, pgd, scale
    budgets: str = "0.01,0.05,0.10"  # fractions of the clean graph's undirected edges
    flips_per_step: int = 1  # meta-gradient attack
    redraw_init: bool = False  # meta-gradient attack: fresh surrogate initialisation at every meta-step
    inits: int = 4  # meta-gradient attack: surrogate initialisations whose attacker losses are averaged
    attacker_loss: str = "ce"  # meta-gradient attack: ce (Meta-Self) | masked_ce (still-correct nodes only)
    gradient_flips_per_step: int = 1
    hidden: int = 16
    inner_steps: int = 100
    inner_learning_rate: float = 1.0  # for row-normalised features; see docs/attacks.md
    momentum: float = 0.9
    pgd_iterations: int = 100
    pgd_learning_rate: float = 200.0
    pgd_candidates: int = 10  # candidate additions per unit of budget (top of the factored gradient)
    pgd_samples: int = 20


@dataclasses.dataclass(frozen=True)
class EvalSection:
    seeds: int = 5
    first_seed: int = 0  # seeds first_seed, ..., first_seed + seeds - 1 (each its own split); tune on others
    victim_runs: int = 5
    epochs: int = 200
    selection: str = "loss_or_accuracy"  # victim model selection reported: loss_or_accuracy | accuracy


@dataclasses.dataclass(frozen=True)
class ScaleSection:
    n_nodes: int = 20000
    n_classes: int = 5
    avg_degree: float = 10.0
    feature_dim: int = 32
    train: float = 0.1
    meta_steps: int = 3
    flips_per_step: int = 1
    inner_learning_rate: float = 0.1  # CSBM features have unit scale


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    name: str = "structure_attack"
    output: str = "results/structure_attack"
    data: DataSection = DataSection()
    attack: AttackSection = AttackSection()
    eval: EvalSection = EvalSection()
    scale: ScaleSection = ScaleSection()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_config(path: str | None, overrides: list[str]) -> AttackConfig:
    values = read_yaml(path, AttackConfig) if path else {}
    config = config_from_dict(apply_overrides(dict(values or {}), overrides, AttackConfig), AttackConfig)
    if config.eval.selection not in SELECTIONS:
        raise SystemExit(f"structure_attack: eval.selection must be one of {', '.join(SELECTIONS)}; "
                         f"got {config.eval.selection!r}.")
    budget_fractions(config.attack.budgets)
    return config


def budget_fractions(budgets: str) -> list[float]:
    """The fractions of ``attack.budgets``, each in (0, 1]; a SystemExit naming the first bad one otherwise."""
    expected = "expected comma-separated fractions of the undirected edges, each in (0, 1], e.g. '0.05,0.10'"
    values = []
    for text in budgets.split(","):
        try:
            value = float(text)
        except ValueError:
            raise SystemExit(f"structure_attack: attack.budgets has {text.strip()!r}, not a number; "
                             f"{expected}.") from None
        if not 0 < value <= 1:
            raise SystemExit(f"structure_attack: attack.budgets has {value:g}, outside (0, 1]; {expected}.")
        values.append(value)
    return values


def load_dataset(config: AttackConfig):
    data = config.data
    if data.name == "karate":
        dataset = karate_club()
    elif data.name == "csbm":
        dataset = csbm(data.n_nodes, data.n_classes, avg_degree=data.avg_degree, homophily=data.homophily,
                       feature_dim=data.feature_dim, signal=data.signal, seed=0)
    else:
        dataset = (load(data.name, normalize_features=data.normalize_features, largest_component=False)
                   if data.root is None else
                   load_planetoid(data.name, data.root, normalize_features=data.normalize_features))
    return attacks.largest_component(dataset) if data.largest_component else dataset


def features_of(dataset):
    x = np.asarray(dataset.features)
    return attacks.SparseFeatures.from_dense(x) if np.mean(x != 0) < 0.1 else jnp.asarray(x)


def budgets_of(config: AttackConfig, n_pairs: int) -> list[tuple[float, int]]:
    return [(f, int(f * n_pairs)) for f in budget_fractions(config.attack.budgets)]


def run_attack(name: str, config: AttackConfig) -> dict:
    dataset = load_dataset(config)
    x = features_of(dataset)
    n_pairs = len(attacks.undirected_pairs(dataset.graph))
    budgets = budgets_of(config, n_pairs)
    largest = max(b for _, b in budgets)
    victim = victim_config(config)
    log(f"{name}: {dataset.name} N={dataset.n_nodes} undirected edges={n_pairs} budgets={budgets}")
    record = {"attack": name, "dataset": dataset.name, "n_nodes": dataset.n_nodes, "n_classes": dataset.n_classes,
              "n_edges": n_pairs,
              "budgets": {f"{f:g}": b for f, b in budgets}, "seeds": []}
    if name == "meta":
        record.update(flips_per_step=config.attack.flips_per_step, redraw_init=config.attack.redraw_init,
                      normalize_features=config.data.normalize_features, inits=config.attack.inits,
                      attacker_loss=config.attack.attacker_loss, inner_steps=config.attack.inner_steps,
                      inner_learning_rate=config.attack.inner_learning_rate)
    output = Path(f"{config.output}_{name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(config.eval.first_seed, config.eval.first_seed + config.eval.seeds):
        split = attacks.random_split(dataset, train=config.data.train, val=config.data.val, seed=seed)
        key = jax.random.key(seed)
        start = time.perf_counter()
        entry = {"seed": seed}
        progress = _progress(f"{name} seed {seed}")
        if name in ("meta", "gradient"):
            if name == "meta":
                meta_config = attacks.MetaConfig(hidden=config.attack.hidden, steps=config.attack.inner_steps,
                                                 learning_rate=config.attack.inner_learning_rate,
                                                 momentum=config.attack.momentum,
                                                 attacker_loss=config.attack.attacker_loss)
                problem = attacks.MetaProblem.create(split.graph, x, split.labels, split.train_mask,
                                                     split.val_mask, key=key, n_classes=dataset.n_classes,
                                                     config=meta_config, inits=config.attack.inits)
                entry["surrogate_fit"] = surrogate_fit(problem, split.graph, name, seed, dataset.n_classes)
                result = attacks.metattack(problem, split.graph, largest,
                                           flips_per_step=config.attack.flips_per_step,
                                           key=_redraw_key(config, key), log=progress)
            else:
                target = attacks.Target.fit(split.graph, x, split.labels, split.train_mask, split.val_mask,
                                            key=key, n_classes=dataset.n_classes, config=victim)
                result = attacks.gradient_attack(target, split.graph, largest,
                                                 flips_per_step=config.attack.gradient_flips_per_step,
                                                 log=progress)
            entry.update(steps=result.steps, attack_seconds=result.seconds,
                         seconds_per_step=result.seconds_per_step)
            flips_at = {b: result.flips[:b] for _, b in budgets}
        else:
            target = attacks.Target.fit(split.graph, x, split.labels, split.train_mask, split.val_mask,
                                        key=key, n_classes=dataset.n_classes, config=victim)
            flips_at, seconds = {}, 0.0
            for _, b in budgets:
                result = attacks.pgd_attack(target, split.graph, b, key=jax.random.fold_in(key, b),
                                            n_candidates=config.attack.pgd_candidates * b,
                                            iterations=config.attack.pgd_iterations,
                                            learning_rate=config.attack.pgd_learning_rate,
                                            samples=config.attack.pgd_samples, log=progress)
                flips_at[b], seconds = result.flips, seconds + result.seconds
            entry.update(attack_seconds=seconds)
        entry["flips"] = {f"{fraction:g}": np.asarray(flips_at[b]).tolist() for fraction, b in budgets}
        entry.update(evaluate_flips(config, dataset, x, split, seed, entry["flips"]))
        entry["seconds"] = time.perf_counter() - start
        entry["peak_memory_mib"] = peak_memory_mib()
        record["seeds"].append(entry)
        log(f"{name} seed {seed}: accuracy {entry['accuracy']} in {entry['seconds']:.0f} s, "
            f"peak RSS {entry['peak_memory_mib']:.0f} MiB")
        output.write_text(json.dumps(record, indent=1))
    return record


def surrogate_fit(problem, graph, name: str, seed: int, n_classes: int) -> dict:
    """The inner surrogate's fit on the clean graph (`jgrad.attacks.MetaProblem.surrogate_fit`), logged."""
    fit = {k: float(v) for k, v in jax.device_get(jax.jit(problem.surrogate_fit)(graph))._asdict().items()}
    steps, rate = problem.config.steps, problem.config.learning_rate
    log(f"{name} seed {seed}: surrogate after {steps} inner steps (lr {rate:g}): "
        f"train loss {fit['train_loss']:.3f} (untrained: {np.log(n_classes):.3f}), train accuracy "
        f"{fit['train_accuracy']:.3f}, agrees with the self-training labels on {fit['pseudo_agreement']:.3f}")
    return fit


evaluate = jax.jit(attacks.victim_accuracy, static_argnames=("n_classes", "config"))


def victim_config(config: AttackConfig, selection: str | None = None) -> attacks.GCNConfig:
    return dataclasses.replace(attacks.VICTIM, epochs=config.eval.epochs, selection=selection or config.eval.selection)


def evaluate_flips(config: AttackConfig, dataset, x, split, seed: int, flips: dict[str, list]) -> dict:
    """Test accuracy of victims retrained on the clean graph and on each budget's flips, under both
    model-selection rules (``accuracy`` holds the one ``eval.selection`` names)."""
    labels = jnp.asarray(split.labels)
    masks = tuple(jnp.asarray(m) for m in (split.train_mask, split.val_mask, split.test_mask))
    n = split.graph.n_nodes
    edges = attacks.undirected_pairs(split.graph)
    edge_codes = set((edges[:, 0] * n + edges[:, 1]).tolist())
    padded = 2 * (len(edges) + max((len(p) for p in flips.values()), default=0))  # one shape per run
    victim_keys = jax.random.split(jax.random.key(1000 + seed), config.eval.victim_runs)
    by_rule = {rule: {} for rule in SELECTIONS}
    made, added = {}, {}
    for fraction, pairs in [("0", [])] + list(flips.items()):
        start = time.perf_counter()
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        graph = attacks.perturbed_graph(split.graph, pairs, n_edges=padded)
        for rule in by_rule:
            accuracy = evaluate(graph, x, labels, masks, victim_keys, n_classes=dataset.n_classes,
                                config=victim_config(config, rule))
            by_rule[rule][fraction] = float(jnp.mean(accuracy))
        log(f"seed {seed}: {config.eval.victim_runs} victims on {len(pairs)} flips (budget {fraction}): test "
            f"accuracy {by_rule[config.eval.selection][fraction]:.4f} in {time.perf_counter() - start:.0f} s")
        made[fraction] = int(len(pairs))
        added[fraction] = int(sum(int(min(i, j)) * n + int(max(i, j)) not in edge_codes for i, j in pairs))
    return {"accuracy": by_rule[config.eval.selection], "accuracy_by_selection": by_rule,
            "selection": config.eval.selection, "flips_made": made, "added": added}


def reevaluate(name: str, config: AttackConfig) -> dict:
    """Retrains the victims on the flips a finished attack saved (``<output>_<name>.json``), in place."""
    path = Path(f"{config.output}_{name}.json")
    if not path.exists():
        raise SystemExit(f"structure_attack: --evaluate needs {path}; run the {name!r} attack first.")
    record = json.loads(path.read_text())
    dataset = load_dataset(config)
    x = features_of(dataset)
    for entry in record["seeds"]:
        if "flips" not in entry:
            raise SystemExit(f"structure_attack: {path} seed {entry['seed']} has no saved flips (written by an "
                             "older version); run the attack again.")
        split = attacks.random_split(dataset, train=config.data.train, val=config.data.val, seed=entry["seed"])
        entry.update(evaluate_flips(config, dataset, x, split, entry["seed"], entry["flips"]))
        log(f"{name} seed {entry['seed']}: accuracy {entry['accuracy']}")
    path.write_text(json.dumps(record, indent=1))
    return record


def _redraw_key(config: AttackConfig, key: jax.Array) -> jax.Array | None:
    """The key Metattack re-draws the surrogate's initialisation from at each meta-step, if configured."""
    return jax.random.fold_in(key, 1) if config.attack.redraw_init else None


def _progress(prefix: str):
    def write(line: str) -> None:
        words = line.split()
        if words[0] != "step" or int(words[1].rstrip(":")) % 25 == 0:
            log(f"{prefix} {line}")

    return write


def run_scale(config: AttackConfig) -> dict:
    scale = config.scale
    start = time.perf_counter()
    dataset = csbm(scale.n_nodes, scale.n_classes, avg_degree=scale.avg_degree, feature_dim=scale.feature_dim,
                   train_fraction=scale.train, val_fraction=0.1, seed=0)
    x = jnp.asarray(dataset.features)
    n_pairs = len(attacks.undirected_pairs(dataset.graph))
    log(f"scale: CSBM N={dataset.n_nodes} undirected edges={n_pairs} F={scale.feature_dim}")
    meta_config = attacks.MetaConfig(hidden=config.attack.hidden, steps=config.attack.inner_steps,
                                     learning_rate=scale.inner_learning_rate, momentum=config.attack.momentum)
    problem = attacks.MetaProblem.create(dataset.graph, x, dataset.labels, dataset.train_mask, dataset.val_mask,
                                         key=jax.random.key(0), n_classes=scale.n_classes, config=meta_config)
    setup = time.perf_counter() - start
    budget = scale.meta_steps * scale.flips_per_step
    result = attacks.metattack(problem, dataset.graph, budget, flips_per_step=scale.flips_per_step,
                               key=_redraw_key(config, jax.random.key(0)), log=lambda line: log(f"scale {line}"))
    record = {"attack": "scale", "n_nodes": dataset.n_nodes, "n_edges": n_pairs, "feature_dim": scale.feature_dim,
              "inner_steps": config.attack.inner_steps, "inner_learning_rate": scale.inner_learning_rate,
              "redraw_init": config.attack.redraw_init,
              "meta_steps": result.steps, "setup_seconds": setup,
              "attack_seconds": result.seconds, "seconds_per_step": result.seconds_per_step,
              "peak_memory_mib": peak_memory_mib(),
              "dense_adjacency_mib": dataset.n_nodes ** 2 * 4 / 2 ** 20}
    log(f"scale: {result.steps} meta-steps in {result.seconds:.1f} s ({result.seconds_per_step:.1f} s per step "
        f"after compilation), peak RSS {record['peak_memory_mib']:.0f} MiB; one dense float32 N x N array "
        f"would be {record['dense_adjacency_mib']:.0f} MiB")
    output = Path(f"{config.output}_scale.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1))
    return record


def summarize(values: list[float]) -> tuple[float, float]:
    return 100 * float(np.mean(values)), 100 * float(np.std(values))


FIXED_MODEL_ATTACKS = {"gradient": "greedy gradient (fixed GCN)", "pgd": "PGD (fixed GCN)"}


def meta_label(part: dict, first_seed: int = 0) -> str:
    """A Metattack run's label from the options its result file records (and its seeds, if they are not
    the configured ones starting at ``first_seed``)."""
    bits = [f"inner lr {part['inner_learning_rate']:g}"]
    seeds = [s["seed"] for s in part["seeds"]]
    if seeds and seeds[0] != first_seed:
        bits.append(f"seeds {seeds[0]}-{seeds[-1]}")
    if part["inits"] > 1:
        bits.append(f"loss over {part['inits']} inits")
    if part["redraw_init"]:
        bits.append("init redrawn per meta-step")
    if part["flips_per_step"] > 1:
        bits.append(f"{part['flips_per_step']} flips/meta-step")
    if not part["normalize_features"]:
        bits.append("raw 0/1 features")
    if part["attacker_loss"] != "ce":
        bits.append("masked CE")
    return "Metattack, " + ", ".join(bits)


def load_results(config: AttackConfig) -> dict[str, dict]:
    """The result files of one output prefix: ``meta`` (the configured run), ``meta_*`` (variants run
    with other settings), ``gradient``, ``pgd`` and ``scale``, keyed by suffix."""
    prefix = Path(config.output)
    parts = {}
    for path in sorted(prefix.parent.glob(f"{prefix.name}_*.json")):
        suffix = path.stem[len(prefix.name) + 1:]
        if suffix in ("meta", "scale", *FIXED_MODEL_ATTACKS) or suffix.startswith("meta_"):
            parts[suffix] = json.loads(path.read_text())
    return parts


def _summary(seeds: list[dict], fraction: str) -> dict:
    """Mean and std (%) of the reported victim accuracy at one budget, over seeds."""
    mean, std = summarize([s["accuracy"][fraction] for s in seeds])
    return {"mean": mean, "std": std, "seeds": len(seeds)}


def _cell(seeds: list[dict], fraction: str, rule: str) -> str:
    """Mean ± std (%) at one budget with the victims kept by another selection rule."""
    return "%.2f ± %.2f" % summarize([s["accuracy_by_selection"][rule][fraction] for s in seeds])


def report(config: AttackConfig) -> str:
    parts = load_results(config)
    attacks_run = {n: p for n, p in parts.items() if n != "scale"}
    titles = {n: meta_label(p, config.eval.first_seed) if n.startswith("meta") else FIXED_MODEL_ATTACKS[n]
              for n, p in attacks_run.items()}
    main_names = [n for n in ("meta", *FIXED_MODEL_ATTACKS) if n in attacks_run]
    fractions = [f"{float(f):g}" for f in ["0"] + config.attack.budgets.split(",")]
    table = {n: {f: _summary(part["seeds"], f) for f in fractions} for n, part in attacks_run.items()}
    ranked_at = "0.05" if "0.05" in fractions else fractions[-1]
    variants = sorted((n for n in attacks_run if n.startswith("meta")),
                      key=lambda n: (n != "meta", table[n][ranked_at]["mean"], n))
    other = [r for r in SELECTIONS if r != config.eval.selection][0]
    lines = [f"# Structure attacks on GCN ({config.data.name}, largest connected component, poisoning)", "",
             "Test accuracy (%) of GCNs retrained on the perturbed graph, mean ± std over seeds (each seed: its "
             "own stratified 10/10/80 split, attack, and the mean of "
             f"{config.eval.victim_runs} victim initialisations).", ""]
    lines += ["| budget | published Metattack (Pro-GNN) |" + "".join(f" {titles[n]} |" for n in main_names),
              "|---|---|" + "---|" * len(main_names)]
    for fraction in fractions:
        pub = PUBLISHED.get(float(fraction)) if config.data.name == "cora" else None
        row = f"| {float(fraction) * 100:g}% | {'%.2f ± %.2f' % pub if pub else '–'} |"
        for n in main_names:
            row += " %(mean).2f ± %(std).2f |" % table[n][fraction]
        lines.append(row)
    if variants:
        lines += ["", "Every Metattack run; the configured one first, then the strongest at "
                  f"{float(ranked_at) * 100:g}% first. Victims keep {SELECTION_TEXT[config.eval.selection]}; "
                  "the columns in parentheses keep "
                  f"{SELECTION_TEXT[other]} instead, from the same flips.", "",
                  "| Metattack run | seeds | " + " | ".join(f"{float(f) * 100:g}%" for f in fractions)
                  + " | " + " | ".join(f"({float(f) * 100:g}%)" for f in fractions[1:])
                  + " | surrogate train loss | attack s/seed |",
                  "|---|---|" + "---|" * (2 * len(fractions) - 1) + "---|---|"]
        for n in variants:
            seeds = attacks_run[n]["seeds"]
            fit = [s["surrogate_fit"]["train_loss"] for s in seeds if "surrogate_fit" in s]
            row = f"| {titles[n].removeprefix('Metattack, ')} | {len(seeds)} | "
            row += " | ".join("%(mean).2f ± %(std).2f" % table[n][f] for f in fractions) + " | "
            row += " | ".join(f"({_cell(seeds, f, other)})" for f in fractions[1:])
            row += f" | {np.mean(fit):.3f} |" if len(fit) == len(seeds) else " | – |"
            row += f" {np.mean([s['attack_seconds'] for s in seeds]):.0f} |"
            lines.append(row)
    lines.append("")
    for n in main_names:
        seeds = attacks_run[n]["seeds"]
        line = f"- {titles[n]}: attack time per seed {np.mean([s['attack_seconds'] for s in seeds]):.0f} s"
        if "steps" in seeds[0]:
            line += (f" ({int(np.mean([s['steps'] for s in seeds]))} scoring steps, median "
                     f"{np.median([s['seconds_per_step'] for s in seeds]):.2f} s each)")
        line += f"; peak RSS of the process {max(s['peak_memory_mib'] for s in seeds):.0f} MiB."
        lines.append(line)
    if "scale" in parts:
        s = parts["scale"]
        lines.append(f"- Metattack on CSBM, N={s['n_nodes']}, {s['n_edges']} undirected edges, F={s['feature_dim']}, "
                     f"T={s['inner_steps']}: {s['meta_steps']} meta-steps, median {s['seconds_per_step']:.1f} s per "
                     f"meta-step after compilation (meta-gradient plus all-pairs scoring), peak RSS "
                     f"{s['peak_memory_mib']:.0f} MiB; a single dense float32 N x N matrix would be "
                     f"{s['dense_adjacency_mib']:.0f} MiB.")
    a = config.attack
    lines += ["", "Notes:",
              f"- Metattack (Meta-Self): linearised 2-layer GCN surrogate (H={a.hidden}), T={a.inner_steps} inner steps of "
              f"SGD with momentum {a.momentum} at the run's inner learning rate, from a fixed initialisation per seed "
              "(\"init redrawn per meta-step\": fresh random weights at every meta-step, as in the reference "
              "implementation, from a key derived from the seed; \"loss over K inits\": the attacker loss "
              "is the mean over K fixed initialisations, each trained by its own inner loop, so the meta-gradient "
              "aims at the victim's unknown initialisation rather than one draw), "
              "attacker loss = cross-entropy on the unlabelled nodes against self-training labels of a linearised GCN "
              "trained on the clean graph. \"surrogate train loss\": its training loss after the T inner steps on "
              "the clean graph (uniform predictions: log C). The meta-gradient is exact (second-order reverse mode "
              "through the checkpointed training scan) and kept as factors: the surrogate is linear, so the "
              "adjacency enters the run only through four propagations hoisted out of the scan, and "
              "`jgrad.adjacency_grad` factors them (rank ~2(2 n_train + 2C), independent of T). Candidates are all "
              "N(N-1)/2 pairs, ranked blockwise; no N x N array is built. One flip per meta-gradient unless stated.",
              "- Constraints: symmetric flips, no self loops, no pair flipped twice, no removal that leaves a node "
              "without neighbours. No degree-distribution (log-likelihood) constraint.",
              "- Greedy gradient and PGD attack a GCN (with ReLU) trained once on the clean graph, with the same "
              "self-training loss; their flips are then used for poisoning like Metattack's. PGD candidates: every "
              f"edge (removal) plus the top {a.pgd_candidates} x budget non-edges of the factored gradient on the clean "
              f"graph (additions); {a.pgd_iterations} projected steps of size {a.pgd_learning_rate:g}/sqrt(t+1), "
              f"projection by bisection, best of {a.pgd_samples} Bernoulli samples within budget.",
              "- Features: each row divided by its sum, except in the runs marked \"raw 0/1 features\", "
              f"which use {config.data.name}'s features as loaded, as the reference attack and Pro-GNN code do "
              "(victim and surrogate alike)"
              + ("; with them the clean accuracy matches the published one." if config.data.name == "cora" else "."),
              "- Victim: GCN, hidden 16, ReLU, dropout 0.5, Adam lr 0.01, weight decay 5e-4, "
              f"{config.eval.epochs} epochs, parameters of {SELECTION_TEXT[config.eval.selection]}.",
              ("- Published numbers: Pro-GNN (Jin et al., 2020) Table 2, GCN under Metattack on Cora; they evaluate "
               "one pre-attacked graph per budget over 10 runs, here each seed attacks its own split."
               if config.data.name == "cora" else
               f"- Published numbers: shown for Cora only; none are given here for {config.data.name}."),
              "- Times: each run is one call of the script, the runs one after another on the same machine, "
              "some of them beside other jobs; read them as upper bounds."]
    text = "\n".join(lines) + "\n"
    Path(f"{config.output}.md").write_text(text)
    runs = {name: _without_flips(part) for name, part in parts.items()}  # the per-attack files keep them
    Path(f"{config.output}.json").write_text(json.dumps({"published": {f"{k:g}": v for k, v in PUBLISHED.items()},
                                                         "labels": titles, "summary": table, "runs": runs}, indent=1))
    _plot(config, table, fractions, titles, main_names)
    return text


def _without_flips(part: dict) -> dict:
    if "seeds" not in part:
        return part
    return {**part, "seeds": [{k: v for k, v in seed.items() if k != "flips"} for seed in part["seeds"]]}


def _plot(config: AttackConfig, table: dict, fractions: list[str], titles: dict[str, str],
          main_names: list[str]) -> None:
    """The main attacks in colour, the other Metattack runs as thin grey lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    largest = max(float(f) for f in fractions)
    if config.data.name == "cora":
        pub = [(f, v) for f, v in sorted(PUBLISHED.items()) if f <= largest + 1e-9]
        ax.errorbar([100 * f for f, _ in pub], [m for _, (m, _) in pub], [s for _, (_, s) in pub],
                    fmt="k--o", lw=2, capsize=3, label="Metattack, published (Pro-GNN Table 2)", zorder=3)
    xs = [100 * float(f) for f in fractions]
    others = [n for n in table if n not in main_names]
    for index, n in enumerate(others):
        ax.plot(xs, [table[n][f]["mean"] for f in fractions], color="0.6", lw=0.8, marker=".",
                label="other Metattack runs (table)" if index == 0 else None, zorder=1)
    colors = ["tab:red", "tab:blue", "tab:green"]
    for index, n in enumerate(main_names):
        dodge = 0.12 * (index - (len(main_names) - 1) / 2)  # side by side, so the error bars stay readable
        ax.errorbar([x + dodge for x in xs], [table[n][f]["mean"] for f in fractions],
                    [table[n][f]["std"] for f in fractions], color=colors[index % 3], marker="osv"[index % 3],
                    capsize=3, lw=1.6, label=titles[n], zorder=2)
    ax.set_xlabel("perturbed edges (%)")
    ax.set_ylabel("GCN test accuracy (%)")
    ax.set_title(f"Poisoning structure attacks on GCN, {config.data.name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when only the scale entry has run
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(f"{config.output}.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--only", default=None, help="comma-separated attacks to run (overrides attack.attacks)")
    parser.add_argument("--evaluate", action="store_true",
                        help="retrain the victims on the flips saved by earlier runs (no attack)")
    parser.add_argument("--report", action="store_true", help="merge the per-attack results and plot")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.evaluate:
        for name in (args.only or config.attack.attacks).split(","):
            reevaluate(name, config)
    elif not args.report:
        names = (args.only or config.attack.attacks).split(",")
        for name in names:
            if name not in ATTACKS:
                raise SystemExit(f"structure_attack: unknown attack {name!r}; valid: {', '.join(ATTACKS)}.")
            run_scale(config) if name == "scale" else run_attack(name, config)
    print(report(config))


if __name__ == "__main__":
    main(sys.argv[1:])
