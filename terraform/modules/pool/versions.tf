terraform {
  # 1.9: variable validations that refer to other variables (desired_capacity to min_size and max_size).
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.8.0, < 7.0.0"
    }
  }
}
