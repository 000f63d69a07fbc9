"""Evidence that pruned answers stay right: the moving-shapes video-QA benchmark (`benchmark`), the accuracy table of
PruneVid and its alternatives (`python -m modeling.eval`), and the baselines it compares against (`baselines`)."""
