solve:{(upper 1#x),1_x}
