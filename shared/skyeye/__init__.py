"""SkyEye Stream: Earth-observation imagery streams through a vision-language model."""
