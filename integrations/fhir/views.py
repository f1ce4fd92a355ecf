from django.http import JsonResponse


def metadata(request):
    return JsonResponse({"resourceType": "CapabilityStatement"})
