"""Training-time augmentation, the network's centre view, and their use in training.

Random crops and mirrors are checked by brute force on images whose pixels are all
distinct (``arange``), so each output identifies the one window it came from.
"""

import dataclasses
import re

import jax
import numpy as np
import pytest

from lwf_jax import augment, inference, losses, methods, models, tasks, train, trunks
from tests import helpers


def distinct_images(batch, height, width, channels=1):
  """``[batch, height, width, channels]`` images with every pixel value distinct."""
  size = batch * height * width * channels
  return np.arange(1, size + 1, dtype=np.float32).reshape(
    batch, height, width, channels
  )


def window_offsets(outputs, inputs):
  """For each output, the ``(top, left)`` of the one window of its input it equals
  (``None`` if none does)."""
  outputs, inputs = np.asarray(outputs), np.asarray(inputs)
  height, width = outputs.shape[1:3]
  offsets = []
  for out, image in zip(outputs, inputs, strict=True):
    found = [
      (top, left)
      for top in range(image.shape[0] - height + 1)
      for left in range(image.shape[1] - width + 1)
      if np.array_equal(out, image[top : top + height, left : left + width])
    ]
    assert len(found) <= 1
    offsets.append(found[0] if found else None)
  return offsets


def mirrored(outputs, inputs):
  """Per example: ``False`` if the output is its input, ``True`` if it is the
  left-right mirror; fails if it is neither."""
  flags = []
  for out, image in zip(np.asarray(outputs), np.asarray(inputs), strict=True):
    same, mirror = np.array_equal(out, image), np.array_equal(out, image[:, ::-1])
    assert same != mirror, "an output is neither its input nor the mirror image"
    flags.append(mirror)
  return np.array(flags)


class TestAugmentation:
  @pytest.mark.parametrize(
    ("kwargs", "message"),
    [
      ({"crop_size": -1}, "crop_size must be an integer >= 0, got -1"),
      ({"pad": -2}, "pad must be an integer >= 0, got -2"),
      ({"crop_size": True}, "crop_size must be an integer >= 0, got True"),
      ({"pad": False}, "pad must be an integer >= 0, got False"),
      ({"crop_size": 4.0}, "crop_size must be an integer >= 0, got 4.0"),
      ({"pad": 1.5}, "pad must be an integer >= 0, got 1.5"),
      ({"flip": 1}, "flip must be True or False, got 1"),
      ({"flip": "yes"}, "flip must be True or False, got 'yes'"),
      ({"flip": None}, "flip must be True or False, got None"),
    ],
  )
  def test_rejects_bad_fields(self, kwargs, message):
    with pytest.raises(ValueError, match=message):
      augment.Augmentation(**kwargs)

  def test_active_when_any_field_is_set(self):
    assert not augment.NONE.active
    assert not augment.Augmentation(crop_size=0, pad=0, flip=False).active
    assert augment.Augmentation(crop_size=4).active
    assert augment.Augmentation(pad=1).active
    assert augment.Augmentation(flip=True).active


class TestRandomCrop:
  def test_every_output_is_a_window_of_its_own_input(self):
    images = distinct_images(64, 6, 6, 2)
    out = augment.random_crop(jax.random.key(0), images, (4, 3))
    assert out.shape == (64, 4, 3, 2)
    offsets = window_offsets(out, images)
    assert None not in offsets
    tops, lefts = zip(*offsets, strict=True)
    # Slack 2 rows and 3 columns: each offset value turns up among 64 draws
    # (missing one has probability below 1e-10).
    assert set(tops) == {0, 1, 2}
    assert set(lefts) == {0, 1, 2, 3}
    # Rows and columns are drawn independently, per example: more distinct pairs
    # than either coordinate alone has values.
    assert len(set(offsets)) > 4
    assert max(np.bincount(tops)) < 40  # uniform: 21 expected of each

  def test_rows_and_columns_are_drawn_independently(self):
    # With equal slack, one key for both would put every crop on the diagonal.
    images = distinct_images(64, 7, 7)
    offsets = window_offsets(
      augment.random_crop(jax.random.key(0), images, (4, 4)), images
    )
    assert None not in offsets
    assert sum(top != left for top, left in offsets) > 32  # 48 expected

  def test_deterministic_for_a_key_and_different_across_keys(self):
    images = distinct_images(16, 7, 7)
    a = augment.random_crop(jax.random.key(3), images, (4, 4))
    b = augment.random_crop(jax.random.key(3), images, (4, 4))
    c = augment.random_crop(jax.random.key(4), images, (4, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

  def test_full_size_window_is_the_image(self):
    images = distinct_images(3, 4, 5)
    out = augment.random_crop(jax.random.key(0), images, (4, 5))
    np.testing.assert_array_equal(out, images)


class TestRandomFlip:
  def test_mirrors_left_to_right(self):
    images = np.array([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]] * 32)[..., None]
    out = np.asarray(augment.random_flip(jax.random.key(0), images))[..., 0]
    rows = {tuple(map(tuple, image)) for image in out}
    assert rows == {((0, 1, 2), (3, 4, 5)), ((2, 1, 0), (5, 4, 3))}

  def test_each_output_is_its_input_or_its_mirror_about_half_the_time(self):
    images = distinct_images(256, 3, 4, 2)
    out = augment.random_flip(jax.random.key(1), images)
    flags = mirrored(out, images)
    assert 96 <= flags.sum() <= 160  # 128 expected, standard deviation 8

  def test_deterministic_for_a_key(self):
    images = distinct_images(32, 2, 3)
    a = augment.random_flip(jax.random.key(5), images)
    np.testing.assert_array_equal(a, augment.random_flip(jax.random.key(5), images))
    assert not np.array_equal(a, augment.random_flip(jax.random.key(6), images))


class TestAugment:
  def test_pad_then_crop_back_to_the_stored_size(self):
    images = distinct_images(64, 4, 4)
    aug = augment.Augmentation(pad=2)
    out = np.asarray(augment.augment(jax.random.key(0), images, aug, (4, 4)))
    assert out.shape == (64, 4, 4, 1)
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    offsets = window_offsets(out, padded)
    assert None not in offsets
    tops, lefts = zip(*offsets, strict=True)
    assert set(tops) == set(lefts) == {0, 1, 2, 3, 4}
    # At the extreme offsets, two rows or columns of zeros from the padding.
    for image, (top, left) in zip(out, offsets, strict=True):
      assert (top == 0) == (not image[:2].any())
      assert (top == 4) == (not image[2:].any())
      assert (left == 0) == (not image[:, :2].any())
      assert (left == 4) == (not image[:, 2:].any())

  def test_pad_crop_and_flip_to_the_requested_size(self):
    images = distinct_images(64, 6, 6, 3)
    aug = augment.Augmentation(crop_size=4, pad=1, flip=True)
    out = np.asarray(augment.augment(jax.random.key(2), images, aug, (4, 4)))
    assert out.shape == (64, 4, 4, 3)
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)])
    plain = window_offsets(out, padded)
    flipped = window_offsets(out[:, :, ::-1], padded)
    assert all((p is None) != (f is None) for p, f in zip(plain, flipped, strict=True))
    assert 16 <= sum(f is not None for f in flipped) <= 48

  def test_no_crop_when_the_sizes_match(self):
    images = distinct_images(64, 4, 4)
    np.testing.assert_array_equal(
      augment.augment(jax.random.key(0), images, augment.NONE, (4, 4)), images
    )
    aug = augment.Augmentation(crop_size=4, flip=True)
    out = augment.augment(jax.random.key(0), images, aug, (4, 4))
    flags = mirrored(out, images)  # no shifted windows, only mirrors
    assert 0 < flags.sum() < 64

  def test_same_under_jit(self):
    images = distinct_images(64, 6, 6, 3)
    aug = augment.Augmentation(crop_size=4, pad=1, flip=True)
    jitted = jax.jit(augment.augment, static_argnums=(2, 3))
    eager = augment.augment(jax.random.key(7), images, aug, (4, 4))
    np.testing.assert_array_equal(jitted(jax.random.key(7), images, aug, (4, 4)), eager)
    # uint8 images stay uint8, padded with zeros like float ones.
    out = jitted(jax.random.key(7), images.astype(np.uint8), aug, (4, 4))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(eager).astype(np.uint8))


class TestCenterCrop:
  def test_window_for_odd_and_even_slack(self):
    images = np.arange(30, dtype=np.float32).reshape(1, 5, 6, 1)
    # One spare row (top 0) and two spare columns (left 1).
    expected = [[1, 2, 3, 4], [7, 8, 9, 10], [13, 14, 15, 16], [19, 20, 21, 22]]
    out = models.center_crop(images, (4, 4))
    np.testing.assert_array_equal(out[0, :, :, 0], expected)
    # Three spare rows (top 1) and three spare columns (left 1).
    images = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(models.center_crop(images, (1, 1))[0], [[[5]]])

  def test_same_size_is_unchanged(self):
    images = distinct_images(2, 4, 3)
    np.testing.assert_array_equal(models.center_crop(images, (4, 3)), images)

  def test_smaller_images_raise_naming_both_sizes(self):
    with pytest.raises(ValueError, match=r"images of 3x5 pixels .* input 4x4"):
      models.center_crop(np.zeros((1, 3, 5, 1)), (4, 4))


@pytest.fixture(scope="module")
def net():
  """A one-head MLP (no dropout) for 4x4 two-channel images; head ``'t'``, 3
  classes. Shared: initialising a network costs more than the tests using it."""
  rng = jax.random.key(0)
  model, variables = models.init_trunk(trunks.make_trunk("mlp_tiny"), rng, (4, 4, 2))
  return models.add_head(
    model, variables, models.HeadSpec("t", 3), jax.random.fold_in(rng, 1)
  )


# One compiled program per network and shape, not one per operation.
forward = jax.jit(models.forward, static_argnames=("model", "train"))


class TestMultiHeadNetInput:
  def test_larger_images_are_centre_cropped(self, net):
    model, variables = net
    images = np.random.default_rng(0).normal(size=(5, 6, 6, 2)).astype(np.float32)
    big = forward(model, variables, images, train=False)
    centre = forward(model, variables, images[:, 1:5, 1:5], train=False)
    np.testing.assert_array_equal(big.logits["t"], centre.logits["t"])
    np.testing.assert_array_equal(big.features, centre.features)
    # A different window gives different outputs, so the crop is the centre one.
    corner = forward(model, variables, images[:, :4, :4], train=False)
    assert not np.allclose(big.logits["t"], corner.logits["t"])

  def test_uint8_images_are_their_values(self, net):
    model, variables = net
    images = np.random.default_rng(1).integers(0, 256, (4, 4, 4, 2), dtype=np.uint8)
    as_uint8 = forward(model, variables, images, train=False).logits["t"]
    as_float = forward(model, variables, images.astype(np.float32), train=False).logits[
      "t"
    ]
    np.testing.assert_allclose(as_uint8, as_float, rtol=1e-6)

  def test_pixel_mean_is_subtracted_per_channel(self, net):
    plain, variables = net
    mean = (0.5, -2.0)
    model = plain.clone(pixel_mean=mean)  # the mean has no parameters
    images = np.random.default_rng(2).normal(size=(4, 4, 4, 2)).astype(np.float32)
    with_mean = forward(model, variables, images, train=False).logits["t"]
    shifted = images - np.array(mean, np.float32)
    expected = forward(plain, variables, shifted, train=False).logits["t"]
    np.testing.assert_allclose(with_mean, expected, rtol=1e-6, atol=1e-6)
    unshifted = forward(plain, variables, images, train=False).logits["t"]
    assert not np.allclose(with_mean, unshifted)


CROP_AND_FLIP = augment.Augmentation(crop_size=4, flip=True)


class TestTrainStepWithAugmentation:
  """A 4x4 network (an MLP without dropout, so augmentation is the only
  randomness) trained on 6x6 stored images."""

  @pytest.fixture(scope="class")
  @classmethod
  def setup(cls, net):
    task = helpers.toy_task("t", num_train=16, shape=(6, 6, 2))
    model, variables = net
    state = train.create_train_state(
      variables,
      trainable=(".*",),
      learning_rate=0.1,
      dropout_rng=jax.random.key(0),
    )
    # The same call as train.train's, so the loop below reuses the program.
    step = train.compiled_train_step(
      model, train.Objective(), 1, augmentation=CROP_AND_FLIP
    )
    plain_step = train.compiled_train_step(model, train.Objective(), 1)
    return task, model, variables, state, step, plain_step

  def test_loss_is_finite_and_depends_on_the_random_view(self, setup):
    task, model, variables, state, step, plain_step = setup
    batch = {"t": task.train}
    _, first = step(state, batch, None)
    _, second = step(state.replace(step=state.step + 1), batch, None)
    _, plain = plain_step(state, batch, None)
    # Without augmentation the network sees the centre 4x4 view.
    logits = forward(
      model, variables, task.train["image"][:, 1:5, 1:5], train=False
    ).logits["t"]
    centre_loss = losses.cross_entropy(logits, task.train["label"]).mean()
    np.testing.assert_allclose(plain["loss"], centre_loss, rtol=1e-6)
    assert np.isfinite(first["loss"]) and np.isfinite(second["loss"])
    assert abs(float(first["loss"]) - float(plain["loss"])) > 1e-4
    assert abs(float(first["loss"]) - float(second["loss"])) > 1e-4

  def test_views_of_constant_images_change_nothing(self, setup):
    # Every crop and mirror of a constant image is the same image, so the
    # augmented loss is the plain one: rows stay with their labels.
    task, _, _, state, step, plain_step = setup
    levels = np.linspace(-2.0, 2.0, 16, dtype=np.float32)
    images = np.broadcast_to(levels[:, None, None, None], (16, 6, 6, 2))
    batch = {"t": {"image": np.array(images), "label": task.train["label"]}}
    _, augmented = step(state, batch, None)
    _, plain = plain_step(state, batch, None)
    np.testing.assert_allclose(augmented["loss"], plain["loss"], rtol=1e-6)

  def test_recordings_are_taken_on_the_centre_view(self, setup):
    task, model, variables, *_ = setup
    images = task.train["image"]
    recorded = inference.record_outputs(
      model, variables, images, heads=["t"], batch_size=16
    )
    centre = forward(model, variables, images[:, 1:5, 1:5], train=False)
    np.testing.assert_allclose(recorded["t"], centre.logits["t"], rtol=1e-5, atol=1e-6)
    features = inference.predict(model, variables, images, batch_size=16).features
    np.testing.assert_allclose(features, centre.features, rtol=1e-5, atol=1e-6)

  def test_train_loop_with_augmentation(self, setup):
    task, model, _, state, _, _ = setup
    trained, metrics = train.train(
      state,
      {"t": task.train},
      model=model,
      objective=train.Objective(),
      num_epochs=2,
      batch_size=16,  # the shapes of the steps above: no new compilation
      rng=jax.random.key(1),
      augmentation=CROP_AND_FLIP,
    )
    assert int(trained.step) == 2  # 2 epochs of one batch of 16
    assert np.isfinite(metrics["loss"])
    assert not np.array_equal(
      trained.params["heads"]["t"]["out"]["kernel"],
      state.params["heads"]["t"]["out"]["kernel"],
    )


def shifted_task(name, shape, *, seed=0):
  """A toy task whose channels have clearly different means."""
  base = helpers.toy_task(name, num_train=16, num_test=8, shape=shape, seed=seed)
  offsets = np.arange(shape[-1], dtype=np.float32) * 3.0 - 1.0
  return tasks.make_task(
    name,
    range(base.num_classes),
    {**base.train, "image": base.train["image"] + offsets},
    {**base.test, "image": base.test["image"] + offsets},
  )


RECIPE = methods.Recipe(
  warmup=methods.Schedule(0, 0.01),  # no warm-up: one compile fewer
  main=methods.Schedule(1, 0.01),
  batch_size=8,
)


class TestMethodsWithCrops:
  def test_first_network_reads_crops_and_knows_the_mean_pixel(self):
    task = shifted_task("first", (6, 6, 2))
    model, variables = methods.learn_first_task(
      "mlp_tiny",
      task,
      schedule=methods.Schedule(1, 0.01),
      recipe=dataclasses.replace(
        RECIPE, augmentation=augment.Augmentation(crop_size=4), subtract_mean=True
      ),
      rng=jax.random.key(0),
    )
    assert model.image_shape == (4, 4, 2)
    expected = task.train["image"].astype(np.float64).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(expected, [-1.0, 2.0], atol=0.2)  # the offsets
    np.testing.assert_allclose(model.pixel_mean, expected, rtol=1e-12)
    assert np.isfinite(variables["params"]["trunk"]["fc1"]["kernel"]).all()

  @pytest.mark.parametrize(
    ("image_shape", "aug", "expected"),
    [
      ((6, 6, 1), augment.Augmentation(crop_size=4), (4, 4, 1)),
      ((6, 5, 3), augment.Augmentation(crop_size=5), (5, 5, 3)),
      ((6, 6, 1), augment.Augmentation(pad=2, flip=True), (6, 6, 1)),
      ((6, 6, 1), augment.NONE, (6, 6, 1)),
    ],
  )
  def test_input_shape(self, image_shape, aug, expected):
    assert methods.input_shape(image_shape, aug) == expected

  @pytest.mark.parametrize(
    ("image_shape", "crop_size", "message"),
    [((6, 6, 1), 7, "crop_size 7 exceeds the 6x6 images"), ((6, 5, 3), 6, "6x5")],
  )
  @pytest.mark.parametrize("pad", [0, 2])
  def test_input_shape_rejects_crops_larger_than_the_images(
    self, image_shape, crop_size, message, pad
  ):
    # Padding widens training's random crops only: the centre view that
    # recording and evaluation take must still fit in the stored images.
    aug = augment.Augmentation(crop_size=crop_size, pad=pad)
    with pytest.raises(ValueError, match=message):
      methods.input_shape(image_shape, aug)

  def test_numpy_integers_are_accepted(self):
    aug = augment.Augmentation(crop_size=np.int64(4), pad=np.int32(1))
    assert methods.input_shape((6, 6, 1), aug) == (4, 4, 1)

  @pytest.mark.parametrize("method", ["joint", "lwf"])
  def test_old_and_new_images_of_different_sizes_share_a_step(self, net, method):
    # Joint training puts the old task's 4x4 images and the new task's 6x6 ones
    # in one batch: each is read at the network's centre view.
    model, variables = net
    old = helpers.toy_task("t", num_train=16, num_test=8, shape=(4, 4, 2))
    larger = helpers.toy_task("larger", num_train=16, num_test=8, shape=(6, 6, 2))
    grown, trained = methods.add_task(
      model,
      variables,
      larger,
      method=methods.get_method(method),
      recipe=RECIPE,
      rng=jax.random.key(1),
      old_tasks=[old],
    )
    for task in (old, larger):
      assert 0.0 <= inference.evaluate(grown, trained, task, batch_size=8)["task_il"]

  def test_add_task_with_larger_images(self, net):
    model, variables = net
    larger = helpers.toy_task("larger", num_train=16, num_test=8, shape=(6, 6, 2))
    grown, trained = methods.add_task(
      model,
      variables,
      larger,
      method=methods.get_method("lwf"),
      recipe=RECIPE,
      rng=jax.random.key(1),
    )
    assert grown.head_names == ["t", "larger"]
    assert grown.image_shape == (4, 4, 2)
    assert not np.array_equal(
      trained["params"]["trunk"]["fc1"]["kernel"],
      variables["params"]["trunk"]["fc1"]["kernel"],
    )
    accuracy = inference.evaluate(grown, trained, larger, batch_size=8)
    assert 0.0 <= accuracy["task_il"] <= 1.0

  @pytest.mark.parametrize("shape", [(3, 4, 2), (4, 3, 2), (4, 4, 1), (6, 6, 3)])
  def test_rejects_smaller_images_or_other_channels(self, net, shape):
    model, variables = net
    misfit = helpers.toy_task("misfit", num_train=16, shape=shape)
    message = re.escape(
      f"task 'misfit' has images of shape {shape}, the network reads (4, 4, 2)"
    )
    with pytest.raises(ValueError, match=message):
      methods.check_images_fit(misfit, model)
    with pytest.raises(ValueError, match=message):
      methods.add_task(
        model,
        variables,
        misfit,
        method=methods.get_method("lwf"),
        recipe=RECIPE,
        rng=jax.random.key(1),
      )
