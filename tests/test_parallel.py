"""Data-parallel training on 8 simulated CPU devices matches 1 device (own process)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import dataclasses, json
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from jaxmnist import configs, data, parallel, steps

    assert jax.device_count() == 8, jax.devices()
    # The default recipe (BatchNorm in every block, dropout, augmentation) on a shorter
    # net of the family: the same sharding, a quicker compile.
    config = dataclasses.replace(configs.default(), epochs=1, arch="c8 p v16 v16")
    key = jax.random.key(0)
    split = data.Split(
        jax.random.randint(key, (512, 28, 28, 1), 0, 256).astype(np.uint8),
        jax.random.randint(jax.random.key(1), (512,), 0, 10))

    def run(devices, config=config, teacher=None, n=4):
        trainer = parallel.Trainer(config, devices)
        state = trainer.put(steps.create_train_state(config, jax.random.key(2), 4, teacher))
        perm = trainer.permutation(jax.random.key(3), len(split), config.batch_size)
        losses, specs = [], set()
        for i in range(n):
            batch = trainer.get_batch(trainer.put(split), perm, i, jax.random.key(4))
            specs.add(batch["image"].sharding.spec == P("data"))
            state, metrics = trainer.train_step(state, batch, jax.random.key(5))
            losses.append(float(metrics["loss"]))
            if i == 0:
                first = jax.device_get(state)
        leaf = jax.tree.leaves(state.params)[0]
        return first, losses, specs, len(leaf.sharding.device_set)

    s8, l8, specs8, n8 = run(jax.devices())
    s1, l1, _, _ = run(jax.devices()[:1])
    # Distilled from a teacher (its logits computed in the step, on each device's shard).
    from jaxmnist.models import Net
    teacher_net = Net(arch="c8 p v8")
    teacher = (teacher_net, teacher_net.init(jax.random.key(7), split.images[:1] / 1.0))
    distilled = dataclasses.replace(config, teacher="a run", distill_weight=0.7)
    _, kd8, _, _ = run(jax.devices(), distilled, teacher, 2)
    _, kd1, _, _ = run(jax.devices()[:1], distilled, teacher, 2)
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    print(json.dumps({"losses8": l8, "losses1": l1, "specs8": sorted(specs8),
                      "param_devices": n8, "params_diff": diff(s8.params, s1.params),
                      "kd8": kd8, "kd1": kd1, "plain1": l1[:2],
                      "stats_diff": diff(s8.batch_stats, s1.batch_stats)}))
""")


@pytest.mark.slow  # a process of its own over 8 simulated devices: 25-40 s
def test_eight_devices_match_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["specs8"] == [True]  # batches split over the 8 devices: P("data")
    assert out["param_devices"] == 8  # parameters replicated on all of them
    # BatchNorm normalises with global-batch statistics, so the first step agrees to
    # float32 round-off (per-device statistics would change the loss in the 2nd digit)...
    assert abs(out["losses8"][0] - out["losses1"][0]) < 1e-6, out
    assert out["params_diff"] < 2e-5 and out["stats_diff"] < 2e-5, out
    # ...and later steps only drift by that round-off (random labels amplify it a little).
    for a, b in zip(out["losses8"], out["losses1"]):
        assert abs(a - b) < 2e-3, out
    # Distilled, the same: 8 devices give 1 device's loss, which is not the plain one.
    assert abs(out["kd8"][0] - out["kd1"][0]) < 1e-6, out
    assert abs(out["kd8"][1] - out["kd1"][1]) < 2e-3, out
    assert abs(out["kd1"][0] - out["plain1"][0]) > 1e-3, out
