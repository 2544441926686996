solve:{distinct x}
