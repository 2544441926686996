solve:{x~reverse x}
