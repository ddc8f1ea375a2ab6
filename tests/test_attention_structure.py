"""Spatial entropy, component counts and DBSCAN against scipy/sklearn and hand-computed grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from analyses import attention_structure as A
from tests.conftest import cross_grid_by_hand


def test_entropy_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        grid = rng.random((6, 7)) * rng.integers(1, 100)
        assert A.spatial_entropy(grid) == pytest.approx(stats.entropy(grid.ravel()), abs=1e-12)
    assert A.spatial_entropy(np.ones((4, 4))) == pytest.approx(np.log(16))
    assert A.spatial_entropy([[0, 5], [0, 0]]) == 0.0


def test_top_mass_by_hand():
    grid = [[0.4, 0.1], [0.3, 0.2]]
    assert A.top_mass_mask(grid, 0.5).tolist() == [[True, False], [True, False]]  # 0.4 + 0.3 reaches 0.5
    assert A.top_mass_mask(grid, 0.4).tolist() == [[True, False], [False, False]]
    assert A.top_mass_mask(grid, 1.0).all()


def test_component_counts_by_hand_and_against_scipy():
    blobs = np.zeros((8, 8))
    blobs[0:2, 0:2] = 1  # one blob
    blobs[5, 5:8] = 1  # a bar
    blobs[2, 2] = 1  # touches the first blob only diagonally: its own component under 4-connectivity
    assert A.component_count(blobs, top_mass=1.0) == 3
    rng = np.random.default_rng(1)
    for _ in range(20):
        grid = rng.random((9, 9)) ** 4
        mask = A.top_mass_mask(grid, 0.5)
        assert A.component_count(grid, 0.5) == ndimage.label(mask)[1]  # default structure = 4-neighbours


@pytest.mark.parametrize("seed", range(5))
def test_dbscan_counts_are_eight_neighbour_components_by_scipy(seed):
    # on grid coordinates, DBSCAN with eps 1.5 links exactly the 8 neighbours: with min_samples 1 its clusters are
    # scipy's 8-connected components; with min_samples 2 the lone patches are noise
    rng = np.random.default_rng(seed)
    grid = rng.random((10, 10)) ** 6
    mask = A.top_mass_mask(grid, 0.6)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    assert A.dbscan_clusters(grid, top_mass=0.6, eps=1.5, min_samples=1) == n
    assert A.dbscan_clusters(grid, top_mass=0.6, eps=1.5, min_samples=2) == int((sizes >= 2).sum())


def test_dbscan_at_the_study_settings_disagrees_with_c_k_by_hand():
    # two diagonal neighbours and a lone patch, each of the three holding a third of the mass
    grid = np.full((5, 5), 1e-9)
    grid[0, 0] = grid[1, 1] = grid[4, 4] = 1.0
    assert A.component_count(grid, top_mass=0.99) == 3  # four-neighbour components: diagonals apart
    assert A.dbscan_clusters(grid, top_mass=0.99, eps=1.5, min_samples=2) == 1  # diagonal pair joined, lone one noise
    assert A.dbscan_clusters(grid, top_mass=0.99, eps=1.0, min_samples=1) == 3  # the old defaults: C_k again


@pytest.mark.parametrize("bad", [[1, 2, 3], [[0, 0], [0, 0]], [[-1, 2], [1, 1]], [[np.nan, 1], [1, 1]]])
def test_bad_grids_are_refused(bad):
    with pytest.raises(ValueError):
        A.spatial_entropy(bad)


def test_early_lock_then_diffusion():
    assert A.early_lock_then_diffusion([2.0, 1.2, 0.8, 1.5, 2.1, 2.2])["holds"]
    assert A.early_lock_then_diffusion([2.0, 1.2, 0.8, 1.5, 2.1, 2.2])["lock_layer"] == 2
    assert not A.early_lock_then_diffusion([0.5, 1.0, 1.5, 2.0])["holds"]  # monotone diffusion, no lock
    assert not A.early_lock_then_diffusion([2.0, 1.5, 1.0, 0.5])["holds"]  # monotone sharpening


def test_image_attention_equals_eager_average(model, images, eager_hf):
    images = [images[0], images[0]]  # one image size: every family's maps stack
    inputs = model.prepare(images=images, prompts=["is there a red square in the image ?", "how many"])
    maps = A.image_attention(model, inputs)
    with torch.no_grad():
        ref = eager_hf(**inputs.tensors, output_attentions=True).attentions
    last = inputs.last_positions()
    layers = A.image_layers(model)
    assert layers == (sorted(model.cfg.cross_layers) or list(range(model.cfg.n_layers)))
    for k, layer in enumerate(layers):
        for item in range(2):
            row = ref[layer][item, :, last[item]].mean(0)
            if model.cfg.cross_layers:  # keys: tile by tile, a class token first, tiles cut row-major
                expected = cross_grid_by_hand(model, inputs, item, row)
            else:
                span = inputs.image_spans[item][0]
                expected = row[list(span.base.positions)].reshape(span.base.grid).numpy()
            assert np.allclose(maps.grids[k, item], expected, atol=1e-6)
    assert maps.entropy().shape == (len(layers), 2)


def test_stitched_attention_lays_each_crop_where_it_sits(model, images, eager_hf):
    inputs = model.prepare(images=images, prompts=["is there a red square in the image ?", "how many"])
    grids = A.item_grids(model, inputs, view="stitched")
    if model.cfg.cross_layers:  # tiles only, either view: the picture's tiles side by side
        with torch.no_grad():
            ref = eager_hf(**inputs.tensors, output_attentions=True).attentions
        base = A.item_grids(model, inputs, view="base")
        for item in range(2):
            for k, layer in enumerate(A.image_layers(model)):
                row = ref[layer][item, :, inputs.last_positions()[item]].mean(0)
                assert np.allclose(grids[item][k], cross_grid_by_hand(model, inputs, item, row), atol=1e-6)
                assert np.array_equal(base[item][k], grids[item][k])
        return
    with torch.no_grad():
        ref = eager_hf(**inputs.tensors, output_attentions=True).attentions
    last = inputs.last_positions()
    for item in range(2):
        span = inputs.image_spans[item][0]
        crops = [v for v in span.all_views if v.kind != "base"] or [span.base]  # one view: stitched is that grid
        rows, cols = crops[0].grid
        tiles = crops[0].tiles
        assert grids[item].shape == (model.cfg.n_layers, tiles[0] * rows, tiles[1] * cols)
        for layer in range(model.cfg.n_layers):
            row = ref[layer][item, :, last[item]].mean(0)
            for view in crops:  # each crop's patch (i, j) at (tile row * rows + i, tile col * cols + j), by hand
                for k, position in enumerate(view.positions):
                    i, j = divmod(k, cols)
                    at = (view.tile[0] * rows + i, view.tile[1] * cols + j)
                    assert abs(grids[item][layer][at] - float(row[position])) < 1e-6
    with pytest.raises(ValueError, match="view must be one of"):
        A.item_grids(model, inputs, view="tiles")


def test_resampling_to_one_cell_keeps_the_mass_and_an_empty_target_is_refused():
    grid = np.arange(12, dtype=float).reshape(3, 4) + 1
    assert A.resample_grid(grid, (1, 1)).tolist() == [[grid.sum()]]  # one cell holds everything
    assert A.resample_grid(grid, (1, 4)).ravel().tolist() == grid.sum(0).tolist()  # columns kept, rows merged
    from vlm_lens.errors import InputError

    for empty in ((0, 4), (3, 0)):
        with pytest.raises(InputError, match="at least one cell"):
            A.resample_grid(grid, empty)


def test_early_lock_then_diffusion_at_the_margin_by_hand():
    # lock at layer 1 (H 1.0), span 2.0, margin 0.25: a rise of exactly 0.5 counts, one just below does not
    curve = [3.0, 1.0, 1.2, 1.5]
    assert A.early_lock_then_diffusion(curve, margin=0.25)["holds"]  # rise 0.5 = 0.25 x span 2.0: holds (>=)
    assert not A.early_lock_then_diffusion([3.0, 1.0, 1.2, 1.49], margin=0.25)["holds"]
