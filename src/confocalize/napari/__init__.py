"""The napari plugin: dock widgets over the library's API (``pip install confocalize[napari]``).

Declared to napari by ``napari.yaml`` (the ``napari.manifest`` entry point). Each widget gathers its
inputs from layers and a few fields, calls one function of the API in a worker thread and turns the
result into layers; no image processing happens here.

* :mod:`.enhance_widget`: a model package applied to an image layer (``predict.enhance_image``, or
  ``uncertainty.enhance_with_uncertainty`` with its uncertainty map as a second layer).
* :mod:`.register_widget`: an HQ layer put onto an LQ layer's grid (``register.register_pair``).
* :mod:`.train_widget`: a model trained on a pairs folder for some minutes (``train.fit``), live.
* :mod:`.layers` and :mod:`.tasks`: layers <-> ``io.Image``; the run/cancel/progress/error panel.
"""
