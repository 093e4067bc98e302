module github.com/example/firewalld-rest

go 1.19
