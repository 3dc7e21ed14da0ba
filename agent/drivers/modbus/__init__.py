"""drivers/modbus"""
