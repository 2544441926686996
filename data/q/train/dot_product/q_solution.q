solve:{[x;y] sum x*y}
