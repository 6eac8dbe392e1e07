"""`plan-job calibrate` on the login node: the request a calibration job is given, the job (or
one per node count) and its result, the calibration record written from it and the checks it
must pass when read back, the devices' peak FLOP/s for MFU, and the table that shows it."""
