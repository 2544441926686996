solve:{(desc distinct x) 1}
