solve:{t:til x; sum t where (0=t mod 3)|0=t mod 5}
