from airflow_sentinel.cli import main

main()
