module example.com/otel-go

go 1.19
