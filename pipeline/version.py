"""The service version, ``x.y.z`` with the meaning of paper section 5.3.

x: backward-incompatible change of the service's output; y: change in the processing pipeline
(segmentation method, deployed models, ...); z: minor changes (aggregation details, input sizes,
bug fixes). Every result and ``/v1/version`` report it.
"""

__version__ = "0.1.0"
