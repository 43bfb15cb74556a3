"""3D PET/CT grounding: I/O and SUV (``io``), synthetic phantoms (``phantom``), report mining
(``reports``), weak labels (``weaklabel``), lesion metrics (``metrics``) and their evaluation
(``evaluate``). See ``docs/petct.md``. Submodules are imported on use, so ``import mmtok`` stays light.
"""
