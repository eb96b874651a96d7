terraform {
  # 1.9: as the modules that call this one.
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.8.0, < 7.0.0"
    }
  }
}
