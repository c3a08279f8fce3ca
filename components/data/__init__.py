"""The data stage: readers, validation, transforms, patchify and the Ray Dataset builder.

Kept import-light: submodules are imported where needed so that ``components.data.patchify``
does not pull in Ray.
"""
