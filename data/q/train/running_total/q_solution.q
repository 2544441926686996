solve:{sums x}
