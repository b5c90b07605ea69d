"""The procedural shapes data: determinism, captions that say what is drawn, the read-back judge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ralu.demo import shapes


def test_same_seed_same_scenes_and_pixels():
    first, second = shapes.scenes(7, 16), shapes.scenes(7, 16)
    assert first == second
    assert np.array_equal(shapes.render_batch(first, 64), shapes.render_batch(second, 64))
    assert shapes.scenes(8, 16) != first


def test_half_resolution_is_the_box_filtered_full_resolution():
    # render(size, supersample=2) samples the 2x finer pixel grid and averages 2x2 blocks, so the
    # 32 px image must equal the 2x2 block means of the unsupersampled 64 px image, up to float32 rounding.
    for scene in shapes.scenes(3, 8):
        fine = shapes.render(scene, 64, supersample=1)
        half = shapes.render(scene, 32)
        assert np.allclose(fine.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)), half, atol=1e-6)


@pytest.mark.parametrize("size", [64, 32])
def test_caption_matches_the_pixels(size):
    palette = np.array(list(shapes.COLOURS.values()), dtype=np.float32)
    for scene in shapes.scenes(11, 60):
        image = shapes.render(scene, size, supersample=1)  # unblended: object pixels are exactly their colour
        masks = shapes.object_masks(scene, size)
        words = scene.caption.split()
        for shape, mask in zip(scene.objects, masks):
            assert mask.sum() > 0
            assert {shape.colour, shape.kind, shape.size} <= set(words)
            colour = np.asarray(shapes.COLOURS[shape.colour], dtype=np.float32)
            assert np.array_equal(image[mask], np.broadcast_to(colour, image[mask].shape))
        background = ~masks.any(axis=0)
        # the background is grey: no pixel there equals a palette colour
        assert not (np.abs(image[background][:, None, :] - palette).max(axis=-1) < 1e-6).any()
        if scene.relation is not None:
            (ya, xa), (yb, xb) = (np.argwhere(m).mean(axis=0) for m in masks)
            expected = {"left of": xa < xb, "right of": xa > xb, "above": ya < yb, "below": ya > yb}
            assert expected[scene.relation], scene.caption


def test_parse_caption_inverts_caption():
    for scene in shapes.scenes(5, 100):
        assert shapes.parse_caption(scene.caption).caption == scene.caption
    with pytest.raises(ValueError, match="relation"):
        shapes.parse_caption("a small red circle beside a large blue star")


def test_check_prompt_accepts_the_generators_own_images():
    # at 64 px every rendered scene must read back as its caption (colours, shapes, relation)
    for scene in shapes.scenes(13, 120):
        result = shapes.check_prompt(shapes.render(scene, 64), scene)
        assert result["all"] == 1.0, (scene.caption, result)


def test_check_prompt_rejects_wrong_captions():
    two = [s for s in shapes.scenes(17, 80) if s.relation is not None][:20]
    for scene in two:
        image = shapes.render(scene, 64)
        wrong_relation = dataclasses.replace(scene, relation=shapes.OPPOSITE[scene.relation])
        assert shapes.check_prompt(image, wrong_relation)["relation"] == 0.0
        colours = {o.colour for o in scene.objects}
        other = next(c for c in shapes.COLOURS if c not in colours)
        recoloured = dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], colour=other),
                                                         scene.objects[1]))
        result = shapes.check_prompt(image, recoloured)
        assert result["colour"] == 0.5 and result["all"] == 0.0


def test_a_mirrored_scene_flips_the_relation_word_and_the_arrangement_and_still_reads_back():
    for scene in shapes.scenes(19, 60):
        partner = shapes.mirrored(scene)
        twice = shapes.mirrored(partner)  # the original, up to the rounding of 1 - (1 - x)
        assert twice.caption == scene.caption
        assert np.allclose([o.center for o in twice.objects], [o.center for o in scene.objects], atol=1e-12)
        assert [o.phrase for o in partner.objects] == [o.phrase for o in scene.objects]
        if scene.relation is not None:
            assert partner.relation == shapes.OPPOSITE[scene.relation] and partner.caption != scene.caption
            # the original picture no longer fits the partner's caption, the partner's own picture does
            assert shapes.check_prompt(shapes.render(scene, 64), partner)["relation"] == 0.0
        else:
            assert partner.caption == scene.caption
        assert shapes.check_prompt(shapes.render(partner, 64), partner)["all"] == 1.0, partner.caption
        assert not np.array_equal(shapes.render(partner, 64), shapes.render(scene, 64))


def test_kinds_swapped_binds_the_kind_words_the_other_way_round_and_still_reads_back():
    seen = set()
    for scene in shapes.scenes(23, 80):
        partner = shapes.kinds_swapped(scene)
        asked = [o.kind for o in scene.objects]
        got = [o.kind for o in partner.objects]
        assert [(o.colour, o.size, o.radius) for o in partner.objects] == [
            (o.colour, o.size, o.radius) for o in scene.objects]
        assert partner.relation == scene.relation and partner.background == scene.background
        if len(set(asked)) == 2:
            seen.add("swap")
            assert got == asked[::-1]
            assert shapes.kinds_swapped(partner).caption == scene.caption
            # the original picture draws each object with the other's kind for the partner's caption
            assert shapes.check_prompt(shapes.render(scene, 64), partner)["shape"] == 0.0
        else:
            seen.add("next")
            assert got == [shapes.KINDS[(shapes.KINDS.index(k) + 1) % 3] for k in asked]
        assert shapes.check_prompt(shapes.render(partner, 64), partner)["all"] == 1.0, partner.caption
        for o in partner.objects:  # inside the image, margin 0.02
            x0, y0, x1, y1 = shapes.extent(o.kind)
            assert 0.02 - 1e-9 <= o.center[0] + o.radius * x0 and o.center[0] + o.radius * x1 <= 0.98 + 1e-9
            assert 0.02 - 1e-9 <= o.center[1] + o.radius * y0 and o.center[1] + o.radius * y1 <= 0.98 + 1e-9
    assert seen == {"swap", "next"}
    # a square in the corner becoming a circle moves inwards just enough
    corner = shapes.Scene((shapes.Shape("square", "red", "large", (0.02 + 0.8 * 0.2, 0.5), 0.2),), None, (0.5, 0.5))
    assert shapes.kinds_swapped(corner).objects[0].center == pytest.approx((0.22, 0.5))


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_classify_shape_on_each_template(kind):
    scene = shapes.Scene((shapes.Shape(kind, "red", "large", (0.5, 0.5), 0.3),), None, (0.5, 0.5))
    assert shapes.classify_shape(shapes.object_masks(scene, 64)[0]) == kind


def test_drawn_kinds_reads_each_object_as_drawn_and_none_where_its_colour_is_missing():
    for scene in shapes.scenes(19, 40):
        image = shapes.render(scene, 64)
        assert shapes.drawn_kinds(image, scene) == [o.kind for o in scene.objects], scene.caption
    # asked for a square, drawn a circle: the circle is what was drawn; asked for green, drawn a green speck
    # far below a smallest object's area: not drawn
    drawn = shapes.Scene((shapes.Shape("circle", "red", "large", (0.3, 0.5), 0.22),
                          shapes.Shape("triangle", "blue", "small", (0.75, 0.5), 0.15),
                          shapes.Shape("square", "green", "small", (0.8, 0.15), 0.04)), "left of", (0.5, 0.5))
    asked = dataclasses.replace(drawn, objects=(dataclasses.replace(drawn.objects[0], kind="square"),
                                                dataclasses.replace(drawn.objects[1], colour="green")))
    assert shapes.drawn_kinds(shapes.render(drawn, 64), asked) == ["circle", None]


def test_kind_bindings_tells_swapped_words_from_a_wrong_kind():
    assert shapes.kind_bindings(["square", "circle"], ["circle", "square"]) == ["other object's"] * 2
    assert shapes.kind_bindings(["square", "circle"], ["square", "square"]) == ["asked", "other object's"]
    assert shapes.kind_bindings(["square", "circle"], ["triangle", None]) == ["neither", "missing"]
    # same kinds asked: a different kind drawn is no other object's
    assert shapes.kind_bindings(["square", "square"], ["circle", "square"]) == ["neither", "asked"]
    assert shapes.kind_bindings(["triangle"], ["circle"]) == ["neither"]
