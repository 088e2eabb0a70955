r"""CPMLA for ebmkit: ICNNs, Convex Potential Flows, mirror Langevin with a learned mirror."""
