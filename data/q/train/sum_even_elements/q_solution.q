solve:{sum x where 0=x mod 2}
