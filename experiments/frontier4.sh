#!/usr/bin/env bash
# Frontier 4 (issue 43): the rounds of validation runs, each on the last 5,000 training
# images. Every run has --tta 8, which records the single pass and 4 and 8 one-pixel
# shifts from the same evaluation (metrics.jsonl: val_accuracy_by_shifts). No
# checkpoints are committed. docs/frontier.md has each lever's gain.
#
#   round 1: test-time augmentation on every small recipe; `fast` with one epoch fewer
#            or airbench's label smoothing 0.2
#   round 2: the small nets with a leaky ReLU (slope 0.01) or a PReLU (one learned slope
#            a block application, +1 param each) in the ReLU's place
#   round 3: `nano` with no head layer (--head none: the last block's 10 channels,
#            averaged, are the logits), its head's 140 parameters moved to depth; two
#            more seeds of `micro` with a leaky ReLU
#   round 4: a third seed of `micro` with a ReLU and of `tiny` with a leaky ReLU, for
#            the 3-seed comparisons (both recipes then took the leaky ReLU); `micro`
#            (leaky ReLU) and `nano` (no head layer) with 60 epochs instead of 20
#   round 5: factorised convs (fcN/fvN: a 3x1 conv then a 1x3) in `micro` (1,978
#            params) and `tiny` (3,746), three seeds each, their shapes widened into the
#            parameters the factorisation frees (the third seeds ran after round 6)
#   round 6: `micro` and `tiny` with no head layer (--head none), its parameters moved
#            to depth: `c8 p v10 v10x5` (1,856) and `c8 p v8 v10 v12 v10` (3,672); a
#            third seed for `tiny`'s, within 0.15 points of the recipe after two
#   round 7: `tiny` with 60 epochs instead of 20, three seeds
#   round 8: `micro` (its train accuracy is its validation accuracy) with no augmentation
#            (as `nano` chose), a peak lr of 0.2 instead of 0.1, and batch 64 instead of
#            128; two seeds each, a third where within 0.15 points of the recipe
#   round 9: an elastic distortion (Simard et al. 2003; --elastic-alpha 16, sigma 4 px)
#            on top of `tiny`'s augmentation and of `micro`'s, three seeds each (`micro`'s
#            third, within 0.15 points after two, ran after round 10)
#  round 10: `micro` with a hidden head layer (--head-hidden: the published 1,936- and
#            2,180-parameter nets' GAP -> dense 16 -> 10), the body narrowed to pay for
#            it: `c8 p v9 v9x4` with 16 hidden units (1,943 params) and `c6 p v10 v10x4`
#            with 15 (1,987); two seeds each
#  round 11: BatchNorm with its scale held at 1 (airbench's frozen scale; --no-bn-scale: one
#            param a channel fewer): `micro` as it is (1,888 params) and with the freed
#            parameters spent on a 9-channel first block (`c9 p v10 v10x4`, 1,989); `nano`
#            with them spent on an 8-channel first block (`c8 p dc10 dc10x2 p dc10x3`, 672);
#            `tiny` as it is (3,574); two seeds each, a third for `tiny` (within 0.15
#            points of the recipe after two; it ran after round 13)
#  round 12: strided convs (scN: a 3x3 conv at stride 2) in place of a pool: `micro` with
#            its first conv strided (`sc8 v10 v10x4`: no 28x28 layer) or with the pool and
#            the conv after it made one strided conv (`c8 sc10 v10x4`), both 1,946 params;
#            `fast` with a strided conv in place of its space-to-depth and the conv after
#            it (`c8 sc16 c16 v16 v16 v16 v16`, 13,226 params); two seeds each, a third
#            for `c8 sc10 v10x4` and `fast`'s (within 0.15 points of the recipe after two;
#            they ran beside round 13)
#  round 13: progressive resizing (--small-epochs K --small-size S: the first K epochs on
#            the images resized to SxS) for `fast`: its 4 epochs with the first 2 at 20x20,
#            and 5 epochs with the first 3 at 20x20 (about the work of 3.5 epochs at
#            28x28); two seeds each, then a third (both within 0.15 points of the recipe
#            after two)
#  round 14: `fast`'s leads timed: `fast`, the strided conv of round 12, progressive resizing
#            of round 13 (2 of 4 epochs and 3 of 5 at 20x20) and the strided conv with 2
#            of 4 epochs at 20x20, one run at a time (one queue, nothing else on the
#            machine), without --tta (its shifted passes would add to every evaluation),
#            the order rotated from seed to seed; each run's metrics.jsonl `seconds` are
#            its time
#  round 15: the same way (one at a time, the order rotated): `fast` again; airbench's
#            whitening first conv (wN: a 3x3 conv frozen at the whitening of the
#            training images' patches, a learned bias, a ReLU) in place of its first
#            block (`w8 s c16 c16 v16 v16 v16 v16`); the strided conv with the first 2 of
#            4 epochs at 20x20 and the whitening conv; and the strided conv's time saved
#            spent on a fifth epoch, the first 2 or 3 at 20x20
#  round 16: the whitening first conv in the small nets, in place of their first block:
#            `w8 p v10 v10x4` (`micro`, 1,930 params), `w8 p v8 v10 v10 v12` (`tiny`,
#            3,606), `w6 p dc10 dc10x2 p dc10x3` (`nano`, 674); two seeds each, a third
#            for `tiny`'s and `nano`'s (within 0.15 points of the recipe after two), and
#            `nano`'s own third seed (its first two are round 10's), beside them
#
#   bash experiments/frontier4.sh ROUND [DATA_DIR]     (two queues, one run each at a time; a
#                                                      third where a round has one)
set -u
cd "$(dirname "$0")/.."
ROUND=${1:-}
DATA=${2:-${JAXMNIST_DATA_DIR:-../shared/datasets/mnist}}
SEL=experiments/results/selection
# The recipes as they were when these rounds ran, pinned by flags: `micro` with a ReLU,
# `nano` as `c4 p dc8 dc10 p dc14` with its head layer.
NANO698=(--arch "c4 p dc8 dc10 p dc14" --head gap)
run() {  # SELECTION-ROUND NAME FLAGS...
  local round=$1 name=$2; shift 2
  .venv/bin/python -m jaxmnist.train --validation 5000 --data-dir "$DATA" --no-progress \
    --out "$SEL/$round" --name "$name" --tta 8 "$@" || echo "FAILED $round/$name" >&2
}
alone() {  # SELECTION-ROUND NAME FLAGS...: a timed run, no test-time augmentation
  local round=$1 name=$2; shift 2
  .venv/bin/python -m jaxmnist.train --validation 5000 --data-dir "$DATA" --no-progress \
    --out "$SEL/$round" --name "$name" "$@" || echo "FAILED $round/$name" >&2
}
case "$ROUND" in
1)
  queue_a() {
    run fast-14 tta8 --recipe fast
    run fast-14 tta8-seed1 --recipe fast --seed 1
    run fast-14 tta8-seed2 --recipe fast --seed 2
    run fast-14 ls0.2-tta8 --recipe fast --label-smoothing 0.2
    run tiny-11 tta8 --recipe tiny
    run tiny-11 tta8-seed2 --recipe tiny --seed 2
    run micro-3 tta8-seed1 --recipe micro --activation relu --seed 1
    run nano-7 tta8-seed1 --recipe nano "${NANO698[@]}" --seed 1
  }
  queue_b() {
    run fast-14 e3-tta8 --recipe fast --epochs 3
    run fast-14 e3-tta8-seed1 --recipe fast --epochs 3 --seed 1
    run fast-14 e3-tta8-seed2 --recipe fast --epochs 3 --seed 2
    run fast-14 ls0.2-tta8-seed1 --recipe fast --label-smoothing 0.2 --seed 1
    run tiny-11 tta8-seed1 --recipe tiny --seed 1
    run micro-3 tta8 --recipe micro --activation relu
    run nano-7 tta8 --recipe nano "${NANO698[@]}"
  } ;;
2)
  queue_a() {
    run tiny-12 prelu --recipe tiny --activation prelu
    run tiny-12 prelu-seed1 --recipe tiny --activation prelu --seed 1
    run micro-4 prelu --recipe micro --activation prelu
    run micro-4 prelu-seed1 --recipe micro --activation prelu --seed 1
    run nano-8 leaky --recipe nano "${NANO698[@]}" --activation leaky_relu
  }
  queue_b() {
    run tiny-12 leaky --recipe tiny --activation leaky_relu
    run tiny-12 leaky-seed1 --recipe tiny --activation leaky_relu --seed 1
    run micro-4 leaky --recipe micro --activation leaky_relu
    run nano-8 leaky-seed1 --recipe nano "${NANO698[@]}" --activation leaky_relu --seed 1
  } ;;
3)
  queue_a() {
    run nano-9 c4-dc10x3 --recipe nano --head none --arch "c4 p dc10 dc10 p dc10x3"
    run nano-9 c4-dc10x3-seed1 --recipe nano --head none --arch "c4 p dc10 dc10 p dc10x3" \
      --seed 1
    run micro-4 leaky-seed1 --recipe micro --activation leaky_relu --seed 1
  }
  queue_b() {
    run nano-9 c6-dc10x2-dc10x3 --recipe nano --head none --arch "c6 p dc10 dc10x2 p dc10x3"
    run nano-9 c6-dc10x2-dc10x3-seed1 --recipe nano --head none \
      --arch "c6 p dc10 dc10x2 p dc10x3" --seed 1
    run micro-4 leaky-seed2 --recipe micro --activation leaky_relu --seed 2
  } ;;
4)
  queue_a() {
    run micro-3 tta8-seed2 --recipe micro --activation relu --seed 2
    run micro-5 leaky-e60 --recipe micro --activation leaky_relu --epochs 60
    run nano-10 e60-seed1 --recipe nano --head none --arch "c6 p dc10 dc10x2 p dc10x3" \
      --epochs 60 --seed 1
  }
  queue_b() {
    run tiny-12 leaky-seed2 --recipe tiny --activation leaky_relu --seed 2
    run nano-10 e60 --recipe nano --head none --arch "c6 p dc10 dc10x2 p dc10x3" --epochs 60
    run micro-5 leaky-e60-seed1 --recipe micro --activation leaky_relu --epochs 60 --seed 1
  } ;;
5)
  # factorised convs (3x1 then 1x3): more depth and width for the same parameters
  queue_a() {
    run micro-6 fv12 --recipe micro --arch "c8 p fv12 fv12x4"
    run micro-6 fv12-seed1 --recipe micro --arch "c8 p fv12 fv12x4" --seed 1
    run micro-6 fv12-seed2 --recipe micro --arch "c8 p fv12 fv12x4" --seed 2
  }
  queue_b() {
    run tiny-13 fv14 --recipe tiny --arch "c8 p fv14 fv14 fv14x3"
    run tiny-13 fv14-seed1 --recipe tiny --arch "c8 p fv14 fv14 fv14x3" --seed 1
    run tiny-13 fv14-seed2 --recipe tiny --arch "c8 p fv14 fv14 fv14x3" --seed 2
  } ;;
6)
  # no head layer: the last block's 10 channels, averaged, are the logits (as `nano`)
  queue_a() {
    run micro-7 x5-nohead --recipe micro --arch "c8 p v10 v10x5" --head none
    run micro-7 x5-nohead-seed1 --recipe micro --arch "c8 p v10 v10x5" --head none --seed 1
  }
  queue_b() {
    run tiny-14 v12-v10-nohead --recipe tiny --arch "c8 p v8 v10 v12 v10" --head none
    run tiny-14 v12-v10-nohead-seed1 --recipe tiny --arch "c8 p v8 v10 v12 v10" --head none \
      --seed 1
    run tiny-14 v12-v10-nohead-seed2 --recipe tiny --arch "c8 p v8 v10 v12 v10" --head none \
      --seed 2
  } ;;
7)
  # `tiny` with 60 epochs instead of 20 (`nano` gained 0.26 on validation, `micro` nothing)
  queue_a() { run tiny-15 e60 --recipe tiny --epochs 60; }
  queue_b() {
    run tiny-15 e60-seed1 --recipe tiny --epochs 60 --seed 1
    run tiny-15 e60-seed2 --recipe tiny --epochs 60 --seed 2
  } ;;
8)
  # `micro`: three config-only levers against its capacity limit
  queue_a() {
    run micro-8 noaug --recipe micro --rotate-degrees 0 --shift-pixels 0
    run micro-8 noaug-seed1 --recipe micro --rotate-degrees 0 --shift-pixels 0 --seed 1
    run micro-8 b64 --recipe micro --batch-size 64
  }
  queue_b() {
    run micro-8 lr0.2 --recipe micro --lr 0.2
    run micro-8 lr0.2-seed1 --recipe micro --lr 0.2 --seed 1
    run micro-8 b64-seed1 --recipe micro --batch-size 64 --seed 1
  } ;;
9)
  # elastic distortion on top of each recipe's own augmentation
  queue_a() {
    run tiny-16 elastic16 --recipe tiny --elastic-alpha 16
    run tiny-16 elastic16-seed2 --recipe tiny --elastic-alpha 16 --seed 2
  }
  queue_b() {
    run tiny-16 elastic16-seed1 --recipe tiny --elastic-alpha 16 --seed 1
    run micro-9 elastic16 --recipe micro --elastic-alpha 16
    run micro-9 elastic16-seed1 --recipe micro --elastic-alpha 16 --seed 1
    run micro-9 elastic16-seed2 --recipe micro --elastic-alpha 16 --seed 2
  } ;;
10)
  # a hidden head layer, paid for by a narrower body
  queue_a() {
    run micro-10 v9-h16 --recipe micro --arch "c8 p v9 v9x4" --head-hidden 16
    run micro-10 v9-h16-seed1 --recipe micro --arch "c8 p v9 v9x4" --head-hidden 16 --seed 1
  }
  queue_b() {
    run micro-10 c6-h15 --recipe micro --arch "c6 p v10 v10x4" --head-hidden 15
    run micro-10 c6-h15-seed1 --recipe micro --arch "c6 p v10 v10x4" --head-hidden 15 --seed 1
  } ;;
11)
  # BatchNorm without its scale, and the parameters it frees spent on width
  queue_a() {
    run micro-11 noscale --recipe micro --no-bn-scale
    run micro-11 noscale-seed1 --recipe micro --no-bn-scale --seed 1
    run nano-11 c8-noscale --recipe nano --arch "c8 p dc10 dc10x2 p dc10x3" --no-bn-scale
    run tiny-17 noscale --recipe tiny --no-bn-scale
  }
  queue_b() {
    run micro-11 c9-noscale --recipe micro --arch "c9 p v10 v10x4" --no-bn-scale
    run micro-11 c9-noscale-seed1 --recipe micro --arch "c9 p v10 v10x4" --no-bn-scale --seed 1
    run nano-11 c8-noscale-seed1 --recipe nano --arch "c8 p dc10 dc10x2 p dc10x3" \
      --no-bn-scale --seed 1
    run tiny-17 noscale-seed1 --recipe tiny --no-bn-scale --seed 1
    run tiny-17 noscale-seed2 --recipe tiny --no-bn-scale --seed 2
  } ;;
12)
  # strided convs in place of pools
  queue_a() {
    run micro-12 sc8 --recipe micro --arch "sc8 v10 v10x4"
    run micro-12 sc8-seed1 --recipe micro --arch "sc8 v10 v10x4" --seed 1
    run fast-15 sc16 --recipe fast --arch "c8 sc16 c16 v16 v16 v16 v16"
  }
  queue_b() {
    run micro-12 sc10 --recipe micro --arch "c8 sc10 v10x4"
    run micro-12 sc10-seed1 --recipe micro --arch "c8 sc10 v10x4" --seed 1
    run fast-15 sc16-seed1 --recipe fast --arch "c8 sc16 c16 v16 v16 v16 v16" --seed 1
    run fast-15 sc16-seed2 --recipe fast --arch "c8 sc16 c16 v16 v16 v16 v16" --seed 2
    run micro-12 sc10-seed2 --recipe micro --arch "c8 sc10 v10x4" --seed 2
  } ;;
13)
  # progressive resizing
  queue_a() {
    run fast-16 s20e2 --recipe fast --small-epochs 2 --small-size 20
    run fast-16 s20e2-seed1 --recipe fast --small-epochs 2 --small-size 20 --seed 1
    run fast-16 s20e2-seed2 --recipe fast --small-epochs 2 --small-size 20 --seed 2
  }
  queue_b() {
    run fast-16 e5-s20e3 --recipe fast --epochs 5 --small-epochs 3 --small-size 20
    run fast-16 e5-s20e3-seed1 --recipe fast --epochs 5 --small-epochs 3 --small-size 20 \
      --seed 1
    run fast-16 e5-s20e3-seed2 --recipe fast --epochs 5 --small-epochs 3 --small-size 20 \
      --seed 2
  } ;;
14)
  # fast's leads, timed one at a time
  SC16=(--arch "c8 sc16 c16 v16 v16 v16 v16")
  S20E2=(--small-epochs 2 --small-size 20)
  lead() {  # NAME SEED: one of the five runs at one seed
    local suffix=""; [ "$2" = 0 ] || suffix="-seed$2"
    case "$1" in
      fast) alone fast-17 "fast$suffix" --recipe fast --seed "$2" ;;
      sc16) alone fast-17 "sc16$suffix" --recipe fast "${SC16[@]}" --seed "$2" ;;
      s20e2) alone fast-17 "s20e2$suffix" --recipe fast "${S20E2[@]}" --seed "$2" ;;
      e5-s20e3) alone fast-17 "e5-s20e3$suffix" --recipe fast --epochs 5 --small-epochs 3 \
        --small-size 20 --seed "$2" ;;
      sc16-s20e2) alone fast-17 "sc16-s20e2$suffix" --recipe fast "${SC16[@]}" "${S20E2[@]}" \
        --seed "$2" ;;
    esac
  }
  queue_a() {
    for x in fast sc16 s20e2 e5-s20e3 sc16-s20e2; do lead $x 0; done
    for x in sc16-s20e2 e5-s20e3 s20e2 sc16 fast; do lead $x 1; done
    for x in s20e2 fast sc16-s20e2 sc16 e5-s20e3; do lead $x 2; done
  }
  queue_b() { :; } ;;
15)
  # the whitening conv; the strided conv with progressive resizing and a fifth epoch
  W8=(--arch "w8 s c16 c16 v16 v16 v16 v16")
  W8SC16=(--arch "w8 sc16 c16 v16 v16 v16 v16")
  SC16=(--arch "c8 sc16 c16 v16 v16 v16 v16")
  lead() {  # NAME SEED: one of the five runs at one seed
    local suffix=""; [ "$2" = 0 ] || suffix="-seed$2"
    case "$1" in
      fast) alone fast-18 "fast$suffix" --recipe fast --seed "$2" ;;
      w8) alone fast-18 "w8$suffix" --recipe fast "${W8[@]}" --seed "$2" ;;
      w8-sc16-s20e2) alone fast-18 "w8-sc16-s20e2$suffix" --recipe fast "${W8SC16[@]}" \
        --small-epochs 2 --small-size 20 --seed "$2" ;;
      sc16-e5-s20e2) alone fast-18 "sc16-e5-s20e2$suffix" --recipe fast "${SC16[@]}" \
        --epochs 5 --small-epochs 2 --small-size 20 --seed "$2" ;;
      sc16-e5-s20e3) alone fast-18 "sc16-e5-s20e3$suffix" --recipe fast "${SC16[@]}" \
        --epochs 5 --small-epochs 3 --small-size 20 --seed "$2" ;;
    esac
  }
  queue_a() {
    for x in fast w8 w8-sc16-s20e2 sc16-e5-s20e2 sc16-e5-s20e3; do lead $x 0; done
    for x in sc16-e5-s20e3 sc16-e5-s20e2 w8-sc16-s20e2 w8 fast; do lead $x 1; done
    for x in w8-sc16-s20e2 fast sc16-e5-s20e3 w8 sc16-e5-s20e2; do lead $x 2; done
  }
  queue_b() { :; } ;;
16)
  # the whitening first conv in the small nets
  queue_a() {
    run micro-13 w8 --recipe micro --arch "w8 p v10 v10x4"
    run micro-13 w8-seed1 --recipe micro --arch "w8 p v10 v10x4" --seed 1
    run tiny-18 w8 --recipe tiny --arch "w8 p v8 v10 v10 v12"
    run nano-12 w6-seed1 --recipe nano --arch "w6 p dc10 dc10x2 p dc10x3" --seed 1
  }
  queue_b() {
    run nano-12 w6 --recipe nano --arch "w6 p dc10 dc10x2 p dc10x3"
    run tiny-18 w8-seed1 --recipe tiny --arch "w8 p v8 v10 v10 v12" --seed 1
    run tiny-18 w8-seed2 --recipe tiny --arch "w8 p v8 v10 v10 v12" --seed 2
  }
  queue_c() {  # run beside the other two
    run nano-12 w6-seed2 --recipe nano --arch "w6 p dc10 dc10x2 p dc10x3" --seed 2 &
    run nano-12 recipe-seed2 --recipe nano --seed 2
    wait
  } ;;
*)
  echo "usage: bash experiments/frontier4.sh ROUND [DATA_DIR]  (ROUND: 1 to 16)" >&2
  exit 2 ;;
esac
queue_a > "/tmp/frontier4-r$ROUND-a.log" 2>&1 &
queue_b > "/tmp/frontier4-r$ROUND-b.log" 2>&1 &
if declare -F queue_c > /dev/null; then queue_c > "/tmp/frontier4-r$ROUND-c.log" 2>&1 & fi
wait
