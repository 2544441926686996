solve:{[x;y] x where x like y,"*"}
