solve:{[s;c] count where s=c}
