"""The synthetic CIR world: rendered scenes, captions, edits, and benchmark files in the real layouts.

Public API:
    Scene, SceneObject, random_scene            scene graphs (scene.py)
    render_scene                                PIL rendering (render.py)
    describe_scene                              paraphrased scene captions (captions.py)
    Edit, sample_edit, apply_edit, relative_caption, parse_relative_caption,
    edit_matches, check_edit                    edits and relative captions (edits.py)
    clip_pretraining_stream, clip_pair_sampler, caption_corpus, rtd_triplets, world_texts   corpora (corpora.py)
    build_world, WorldSizes, read_manifest      the whole world on disk (world.py)
"""

from zscir.data.synthetic.captions import describe_scene
from zscir.data.synthetic.corpora import (
    caption_corpus,
    clip_pair_sampler,
    clip_pretraining_stream,
    rtd_triplets,
    world_texts,
)
from zscir.data.synthetic.edits import (
    KINDS,
    Edit,
    apply_edit,
    check_edit,
    edit_matches,
    parse_relative_caption,
    relative_caption,
    sample_edit,
)
from zscir.data.synthetic.render import render_scene
from zscir.data.synthetic.scene import Scene, SceneObject, random_scene
from zscir.data.synthetic.world import WorldSizes, build_world, read_manifest

__all__ = [
    "KINDS", "Edit", "Scene", "SceneObject", "WorldSizes", "apply_edit", "build_world", "caption_corpus",
    "check_edit", "clip_pair_sampler", "clip_pretraining_stream", "describe_scene", "edit_matches",
    "parse_relative_caption", "random_scene", "read_manifest", "relative_caption", "render_scene", "rtd_triplets",
    "sample_edit", "world_texts",
]
