"""Taking results away: labelled synthetic crater datasets drawn from any model of a run."""
