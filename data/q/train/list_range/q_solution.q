solve:{(max x)-min x}
