"""Synthesis pipelines built on the engine: GRA (:mod:`.gra`) and S3 (:mod:`.s3`).

Pipelines never speak HTTP: every model call goes through :class:`asyncsynth.Engine`.
Import a pipeline's module directly (``from asyncsynth.pipelines.gra import run_gra``);
this package imports nothing so that each pipeline's optional dependencies stay optional.
"""
