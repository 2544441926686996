solve:{x where x>0}
