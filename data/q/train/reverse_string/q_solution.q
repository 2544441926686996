solve:{reverse x}
