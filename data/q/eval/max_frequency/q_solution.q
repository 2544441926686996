solve:{max value count each group x}
