module example.com/solman

go 1.19
