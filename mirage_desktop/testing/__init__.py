"""Models with the real input/output signatures but made-up weights, built on the spot.

Not for swapping real faces: the tests use them (no model hub is reachable from CI), and so do
``mirage bench`` (realistic compute without downloads) and the window's screenshot demo. Kept in
this clearly named package, apart from the code that loads real models."""
